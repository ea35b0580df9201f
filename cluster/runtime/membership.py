"""Live cluster membership from ZooKeeper: joins, leaves and state changes of the
agents (or, with ``record_type=RelayRecord``, of the relays).

A ChildrenWatch on the folder plus a data watch per agent, re-armed at
each read; agents are read asynchronously (pipelined). The callbacks run on
kazoo's threads, so they only compute a diff and hand events to ``emit``; the
consumer (the coordinator's loop or ``clusterctl nodes --watch``) does the rest
on its own thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from cluster.contract.layout import AgentRecord, BadRecord, RelayRecord

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MemberEvent:
    kind: str  # "joined", "changed" or "left"
    node_id: str
    record: Any  # AgentRecord or RelayRecord; None for "left"


class Membership:
    def __init__(
        self,
        zk: KazooClient,
        cluster: str,
        emit: Callable[[MemberEvent], None],
        record_type: type[AgentRecord] | type[RelayRecord] = AgentRecord,
    ):
        self._zk = zk
        self._path = record_type.folder(cluster)
        self._record_type = record_type
        self._emit = emit
        self._lock = threading.Lock()
        self._members: dict[str, Any] = {}  # of record_type
        self._watched: set[str] = set()
        self._warned: set[tuple[str, bytes]] = set()
        self._stopped = False
        self._generation = 0  # of the children watch; an older one ends at its next event

    def start(self) -> None:
        """Start watching; again after a re-election, when the old children watch may have
        died with the agents folder or may still be alive: a new one replaces it either way."""
        self._zk.ensure_path(self._path)
        self._zk.add_listener(self._on_state)
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._zk.ChildrenWatch(self._path, lambda children: self._on_children(children, generation))

    def stop(self) -> None:
        self._stopped = True
        self._zk.remove_listener(self._on_state)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._members)

    def _on_children(self, children: list[str], generation: int) -> bool | None:
        if self._stopped or generation != self._generation:
            return False  # kazoo drops a watch whose function returns False
        with self._lock:
            new = [c for c in children if c not in self._watched]
            self._watched.update(new)
        for child in new:
            self._read(child)
        return None

    def _on_state(self, state: str) -> None:
        # Reconnected: kazoo drops every watch when the connection is lost (SUSPENDED, not
        # only an expired session), so read every known agent again, as kazoo's DataWatch
        # does; reads that find no change emit nothing.
        if state == KazooState.CONNECTED and not self._stopped:
            self._zk.handler.spawn(self._reread)

    def _reread(self) -> None:
        with self._lock:
            known = list(self._watched)
        for node_id in known:
            self._read(node_id)

    def _read(self, node_id: str) -> None:
        """Read an agent's znode and leave a watch on it, without waiting: a thousand
        new agents cost one pipelined burst of reads, not a thousand round trips one
        after the other, as kazoo's DataWatch would make them."""
        path = f"{self._path}/{node_id}"
        self._zk.get_async(path, watch=self._on_watch).rawlink(lambda res: self._on_read(node_id, res))

    def _on_watch(self, event: WatchedEvent) -> None:
        # One watcher for every node (the event names the path): kazoo keeps a path's
        # watchers in a set and a bound method compares equal to itself, so re-arming
        # never piles up duplicate callbacks. A NONE event is kazoo dropping its watches
        # on a lost connection: the reread on CONNECTED covers those, once.
        if event.type != EventType.NONE and not self._stopped:
            self._read(event.path.rsplit("/", 1)[1])

    def _on_read(self, node_id: str, result) -> None:
        if self._stopped:
            return
        try:
            data, _ = result.get()
        except NoNodeError:
            self._gone(node_id)
            return
        except Exception as exc:  # connection trouble: reconnecting reads every agent again
            log.debug("reading agent %s failed: %s", node_id, exc)
            return
        with self._lock:
            self._watched.add(node_id)
        self._on_data(node_id, data)

    def _gone(self, node_id: str) -> None:
        with self._lock:
            self._watched.discard(node_id)
            gone = self._members.pop(node_id, None)
        if gone is not None:
            self._emit(MemberEvent("left", node_id, None))
        # As kazoo's DataWatch does: watch for it coming back, since a quick rejoin
        # can be folded into a children list that still shows it.
        path = f"{self._path}/{node_id}"
        self._zk.exists_async(path, watch=self._on_watch).rawlink(lambda res: self._on_exists(node_id, res))

    def _on_exists(self, node_id: str, result) -> None:
        try:
            back = result.get() is not None
        except Exception:
            return
        if back and not self._stopped:
            self._read(node_id)

    def _on_data(self, node_id: str, data: bytes | None) -> None:
        try:
            record = self._record_type.from_bytes(data)
            if record.node_id != node_id:
                raise BadRecord("node id does not match the znode name")
        except BadRecord as exc:
            self._warn_once(node_id, data or b"", str(exc))
            with self._lock:
                gone = self._members.pop(node_id, None)
            if gone is not None:
                self._emit(MemberEvent("left", node_id, None))
            return
        with self._lock:
            old = self._members.get(node_id)
            self._members[node_id] = record
        if old is None:
            self._emit(MemberEvent("joined", node_id, record))
        elif old != record:
            self._emit(MemberEvent("changed", node_id, record))

    def _warn_once(self, node_id: str, data: bytes, why: str) -> None:
        key = (node_id, data[:256])
        if key not in self._warned:
            self._warned.add(key)
            log.warning("ignoring znode %s/%s: %s", self._path, node_id, why)
