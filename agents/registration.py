"""An agent's (or a relay's) ephemeral znode: register, refuse duplicates, update state, rejoin.

Registering is idempotent (a znode we own already counts as registered), so
the agent simply calls ``register`` again after its session was lost. A znode
held by another *live* agent is a clear error; one left by a dead agent of
this same host (a quick restart after SIGKILL) is waited out until ZooKeeper
expires its session.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import psutil
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError, NodeExistsError

from cluster import layout
from cluster.layout import AgentRecord, BadRecord, RelayRecord
from cluster.zk import ask, tidy

log = logging.getLogger("agents.registration")


class DuplicateNode(RuntimeError):
    pass


class Registration:
    def __init__(self, zk: KazooClient, cluster: str, record: AgentRecord | RelayRecord):
        self.zk = zk
        self.path = f"{record.folder(cluster)}/{layout.check_name(record.node_id, 'node id')}"
        self.record = record

    def register(self, wait_for_stale: float = 30.0) -> None:
        """Each request is bounded (KazooTimeoutError): agents' and relays' loops call this to rejoin."""
        deadline = time.monotonic() + wait_for_stale
        zk = self.zk
        ask(zk.ensure_path_async, self.path.rsplit("/", 1)[0])
        while True:
            try:
                ask(zk.create_async, self.path, self.record.to_bytes(), ephemeral=True)
                return
            except NodeExistsError:
                pass
            try:
                data, stat = ask(zk.get_async, self.path)
            except NoNodeError:
                continue  # it just went away: try again
            if stat.ephemeralOwner == zk.client_id[0]:
                ask(zk.set_async, self.path, self.record.to_bytes())
                return
            holder = _describe(data, type(self.record))
            if not _holder_is_dead(data, type(self.record)) or time.monotonic() > deadline:
                what, flag = ("relay", "--id") if isinstance(self.record, RelayRecord) else ("agent", "--node-id")
                name = "relay id" if what == "relay" else "node id"
                raise DuplicateNode(
                    f"{name} {self.record.node_id!r} is already registered by a live {what} ({holder}); "
                    f"stop that {what} or give this one another {flag}"
                )
            log.info("id %s is held by a dead process (%s); waiting for its session to expire",
                     self.record.node_id, holder)
            time.sleep(0.5)

    def set_state(self, state: str) -> None:
        """Publish ``state``; unreachable ZooKeeper postpones it to the rejoin, which writes the record."""
        self.record = self.record.with_state(state)
        tidy(self.zk, self.zk.set_async, self.path, self.record.to_bytes())

    def deregister(self) -> None:
        """Remove our znode now; if ZooKeeper is unreachable, its session's expiry removes it."""
        tidy(self.zk, self.zk.delete_async, self.path)


def _describe(data: bytes, record_type: type) -> str:
    try:
        other = record_type.from_bytes(data)
        return f"host {other.host}, pid {other.pid}, endpoint {other.endpoint}"
    except BadRecord:
        return "unreadable record"


def _holder_is_dead(data: bytes, record_type: type) -> bool:
    """True only when the holder was on this host and its pid is gone (or reused)."""
    try:
        other = record_type.from_bytes(data)
    except BadRecord:
        return False
    if other.host != socket.gethostname():
        return False
    if other.pid == os.getpid():
        return True  # an earlier session of this very process
    try:
        return abs(psutil.Process(other.pid).create_time() - other.started) > 2.0
    except psutil.NoSuchProcess:
        return True
