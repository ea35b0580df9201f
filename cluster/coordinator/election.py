"""Coordinator leader election and the fencing epoch.

Standbys wait in kazoo's Election recipe. The winner bumps the persistent
epoch znode (its version only ever grows, so the epoch does too), publishes an
ephemeral ``leader`` znode with its client endpoint and epoch, and holds the
lead until ``step_down`` or its ZooKeeper session is lost. The election thread
never touches sockets: it reports through ``on_event(kind, epoch)``. It makes every
ZooKeeper request of taking the lead (``prepare`` too, before the leader znode is
published): kazoo holds a request made while disconnected until ZooKeeper answers
again, which may be never, and the coordinator's loop must not wait on that.

The leader znode is published only once the loop has called ``took_lead``: clients
act on the znode at once, and a loop that had not yet handled ELECTED would refuse
their first requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError

from cluster.contract import layout
from cluster.contract.layout import LeaderRecord

log = logging.getLogger(__name__)

ELECTED, DEPOSED = "elected", "deposed"


def next_epoch(zk: KazooClient, cluster: str) -> int:
    path = layout.epoch_path(cluster)
    zk.ensure_path(path)
    # A versioned write is atomic in ZooKeeper: two writers never get one version.
    return int(zk.set(path, b"").version)


def publish_leader(zk: KazooClient, cluster: str, record: LeaderRecord) -> None:
    path = layout.leader_path(cluster)
    try:
        zk.create(path, record.to_bytes(), ephemeral=True, makepath=True)
    except NodeExistsError:
        # Left by a previous session of ours that has not expired yet; we hold the
        # election lock, so no live leader can own it.
        zk.delete(path)
        zk.create(path, record.to_bytes(), ephemeral=True, makepath=True)


class LeaderElection:
    def __init__(
        self,
        zk: KazooClient,
        cluster: str,
        identifier: str,
        make_record: Callable[[int], LeaderRecord],
        on_event: Callable[[str, int], None],
        prepare: Callable[[], None],
    ):
        self._zk = zk
        self._prepare = prepare
        self._cluster = cluster
        self._identifier = identifier
        self._make_record = make_record
        self._on_event = on_event
        self._stop = threading.Event()
        self._release = threading.Event()
        self._taken = threading.Event()  # the loop leads (took_lead), or the lead is over
        self._epoch = 0
        self._thread = threading.Thread(target=self._run, name="election", daemon=True)
        zk.add_listener(self._on_state)

    def start(self) -> None:
        self._thread.start()

    def took_lead(self, epoch: int) -> None:
        """The coordinator's loop leads with ``epoch`` now: publish the leader znode."""
        if epoch == self._epoch:  # not an ELECTED handled late, from a lead already over
            self._taken.set()

    def stop(self) -> None:
        self._stop.set()
        self._release.set()
        self._taken.set()
        try:
            self._election.cancel()
        except Exception:
            pass
        self._thread.join(timeout=5)

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            # The election lock died with the session: someone else may lead now.
            self._release.set()
            self._taken.set()

    def _run(self) -> None:
        self._election = self._zk.Election(layout.election_path(self._cluster), self._identifier)
        while not self._stop.is_set():
            try:
                self._election.run(self._lead)
            except Exception as exc:  # connection loss while waiting: wait and stand again
                if not self._stop.is_set():
                    log.warning("election interrupted (%s); standing again", exc)
                    self._stop.wait(1.0)

    def _lead(self) -> None:
        if self._stop.is_set():
            return
        self._release.clear()
        self._taken.clear()
        epoch = self._epoch = next_epoch(self._zk, self._cluster)
        self._prepare()
        self._on_event(ELECTED, epoch)
        try:
            self._taken.wait()
            if not self._release.is_set():
                publish_leader(self._zk, self._cluster, self._make_record(epoch))
                log.info("elected leader of cluster %s with epoch %d", self._cluster, epoch)
                self._release.wait()
        finally:  # the loop hears the lead is over however it ends, publish failing too
            self._on_event(DEPOSED, epoch)
        if not self._stop.is_set():
            log.warning("lost the lead (epoch %d); standing by again", epoch)
