"""Live cluster membership from ZooKeeper: joins, leaves and state changes.

A ChildrenWatch on the agents folder plus a DataWatch per agent (both re-arm
themselves in kazoo). The callbacks run on kazoo's thread, so they only compute
a diff and hand events to ``emit``; the consumer (the coordinator's loop or
``clusterctl nodes --watch``) does the rest on its own thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable

from kazoo.client import KazooClient

from . import layout
from .layout import AgentRecord, BadRecord

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MemberEvent:
    kind: str  # "joined", "changed" or "left"
    node_id: str
    record: AgentRecord | None  # None for "left"


class Membership:
    def __init__(self, zk: KazooClient, cluster: str, emit: Callable[[MemberEvent], None]):
        self._zk = zk
        self._path = layout.agents_path(cluster)
        self._emit = emit
        self._lock = threading.Lock()
        self._members: dict[str, AgentRecord] = {}
        self._watched: set[str] = set()
        self._warned: set[tuple[str, bytes]] = set()
        self._stopped = False

    def start(self) -> None:
        self._zk.ensure_path(self._path)
        self._zk.ChildrenWatch(self._path, self._on_children)

    def stop(self) -> None:
        self._stopped = True

    def snapshot(self) -> dict[str, AgentRecord]:
        with self._lock:
            return dict(self._members)

    def _on_children(self, children: list[str]) -> bool | None:
        if self._stopped:
            return False
        with self._lock:
            new = [c for c in children if c not in self._watched]
            self._watched.update(new)
        for child in new:
            self._zk.DataWatch(f"{self._path}/{child}", self._data_watcher(child))
        return None

    def _data_watcher(self, node_id: str) -> Callable:
        def on_data(data: bytes | None, stat: object) -> bool | None:
            if self._stopped:
                return False
            if stat is None:  # deleted: this watch is finished; a rejoin makes a new one
                with self._lock:
                    self._watched.discard(node_id)
                    gone = self._members.pop(node_id, None)
                if gone is not None:
                    self._emit(MemberEvent("left", node_id, None))
                return False
            try:
                record = AgentRecord.from_bytes(data)
                if record.node_id != node_id:
                    raise BadRecord("node id does not match the znode name")
            except BadRecord as exc:
                self._warn_once(node_id, data or b"", str(exc))
                with self._lock:
                    gone = self._members.pop(node_id, None)
                if gone is not None:
                    self._emit(MemberEvent("left", node_id, None))
                return None
            with self._lock:
                old = self._members.get(node_id)
                self._members[node_id] = record
            if old is None:
                self._emit(MemberEvent("joined", node_id, record))
            elif old != record:
                self._emit(MemberEvent("changed", node_id, record))
            return None

        return on_data

    def _warn_once(self, node_id: str, data: bytes, why: str) -> None:
        key = (node_id, data[:256])
        if key not in self._warned:
            self._warned.add(key)
            log.warning("ignoring agent znode %s: %s", node_id, why)
