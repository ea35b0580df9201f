"""Where the dashboard's data comes from: ZooKeeper watches (agents, jobs, the leader and
the election) and the leader's status, asked as `clusterctl status` asks it.

Kazoo calls back on its own threads: every callback only hands a call to ``post``
(which runs it on the event loop's thread), so the model is touched by one thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from cluster.client.leader_status import ask_leader
from cluster.client.records import ATTACHED
from cluster.contract import layout
from cluster.contract.layout import BadRecord, JobRecord, LeaderRecord
from cluster.dashboard.model import State
from cluster.runtime.membership import MemberEvent, Membership

log = logging.getLogger("cluster.dashboard")

Post = Callable[..., Any]  # post(fn, *args): run fn(*args) on the event loop's thread


class Watches:
    """Every ZooKeeper watch the dashboard holds, feeding ``state`` through ``post``."""

    def __init__(self, zk: KazooClient, cluster: str, state: State, post: Post) -> None:
        self.zk, self.cluster, self.state, self.post = zk, cluster, state, post
        self.membership = Membership(zk, cluster, self._member)
        self.jobs = JobWatch(zk, cluster, state, post)

    def start(self) -> None:
        self.membership.start()
        self.jobs.start()
        self.zk.ensure_path(layout.election_path(self.cluster))  # a children watch ends with its node
        self.zk.DataWatch(layout.leader_path(self.cluster), self._leader)
        self.zk.ChildrenWatch(layout.election_path(self.cluster), self._election)

    def stop(self) -> None:
        self.membership.stop()
        self.jobs.stop()

    def _member(self, event: MemberEvent) -> None:
        now = time.time()
        if event.kind == "joined":
            self.post(self.state.member_joined, event.record, now)
        elif event.kind == "changed":
            self.post(self.state.member_changed, event.record, now)
        else:
            self.post(self.state.member_left, event.node_id, now)

    def _leader(self, data: bytes | None, stat: object) -> None:
        try:
            leader = LeaderRecord.from_bytes(data) if data else None
        except BadRecord as exc:
            log.warning("ignoring the leader znode: %s", exc)
            leader = None
        self.post(self.state.leader_seen, leader, time.time())

    def _election(self, children: list[str]) -> None:
        self.post(self.state.candidates_seen, len(children))


class JobWatch:
    """The job records under /clusterd/<cluster>/jobs and whether each owner is attached:
    a children watch on the folder, and on each job a data watch and a watch on its
    ``attached`` node, re-armed at each read, reads pipelined (as runtime/membership.py)."""

    def __init__(self, zk: KazooClient, cluster: str, state: State, post: Post) -> None:
        self.zk, self.state, self.post = zk, state, post
        self.folder = layout.jobs_path(cluster)
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self.zk.ensure_path(self.folder)
        self.zk.add_listener(self._on_state)
        self.zk.ChildrenWatch(self.folder, self._on_children)

    def stop(self) -> None:
        self._stopped = True
        self.zk.remove_listener(self._on_state)

    def _on_children(self, children: list[str]) -> bool | None:
        if self._stopped:
            return False
        with self._lock:
            new = [c for c in children if c.startswith(layout.JOB_PREFIX) and c not in self._known]
            self._known.update(new)
        for name in new:
            self._read(name)
        return None

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED and not self._stopped:  # watches were dropped: read again
            with self._lock:
                known = list(self._known)
            for name in known:
                self.zk.handler.spawn(self._read, name)

    def _read(self, name: str) -> None:
        path = f"{self.folder}/{name}"
        data = self.zk.get_async(path, watch=self._on_watch)
        attached = self.zk.exists_async(f"{path}/{ATTACHED}", watch=self._on_watch)
        data.rawlink(lambda _: attached.rawlink(lambda _: self._on_read(name, data, attached)))

    def _on_watch(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._stopped:
            return
        parts = event.path[len(self.folder) + 1 :].split("/")
        self._read(parts[0])

    def _on_read(self, name: str, data_result: Any, attached_result: Any) -> None:
        try:
            job_id = layout.job_id_of(name)
            data, _ = data_result.get()
            attached = attached_result.get() is not None
            record = JobRecord.from_bytes(data)
        except NoNodeError:
            with self._lock:
                self._known.discard(name)
            self.post(self.state.job_gone, layout.job_id_of(name))
            return
        except (ValueError, BadRecord) as exc:
            log.debug("job znode %s skipped: %s", name, exc)
            return
        except Exception as exc:  # connection trouble: reconnecting reads every job again
            log.debug("reading job %s failed: %s", name, exc)
            return
        self.post(self.state.job_seen, job_id, record, attached)


def leader_status(leader: LeaderRecord, keys_dir: str, timeout: float) -> dict[str, Any]:
    """The leader's status document (ValueError when it cannot be had); blocking."""
    return ask_leader(leader.endpoint, leader.curve_key, keys_dir, timeout)
