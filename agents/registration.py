"""An agent's (or a relay's) ephemeral znode: register, refuse duplicates, update state, rejoin.

Registering is idempotent (a znode we own already counts as registered), so
``keep`` simply registers again whenever the connection comes back, in a thread
of its own: the daemon's loop makes no ZooKeeper request, because a slow or
vanishing ZooKeeper would stall its tasks and heartbeats. A znode held by another
*live* agent is a clear error; one left by a dead agent of this same host (a quick
restart after SIGKILL) is waited out until ZooKeeper expires its session.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import psutil
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError

from cluster.contract import layout
from cluster.contract.layout import AgentRecord, BadRecord, RelayRecord
from cluster.runtime.zk import ask, tidy

log = logging.getLogger("agents.registration")

RETRY_FIRST, RETRY_MAX = 0.5, 10.0  # seconds between tries of a rejoin ZooKeeper did not take


class DuplicateNode(RuntimeError):
    pass


class Registration:
    def __init__(self, zk: KazooClient, cluster: str, record: AgentRecord | RelayRecord):
        self.zk = zk
        self.path = f"{record.folder(cluster)}/{layout.check_name(record.node_id, 'node id')}"
        self.record = record
        self.failed_rejoins = 0  # tries to register again that ZooKeeper refused or did not answer
        self._left = False
        self._reconnected = threading.Event()

    def register(self, wait_for_stale: float = 30.0) -> None:
        """Each request is bounded (KazooTimeoutError): the rejoin thread must not hang on one."""
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
            log.info(
                "id %s is held by a dead process (%s); waiting for its session to expire", self.record.node_id, holder
            )
            time.sleep(0.5)

    def keep(self) -> None:
        """After ``register``: register again whenever the connection comes back (the
        session, and our znode with it, may be gone), retrying while ZooKeeper refuses or
        does not answer, until ``deregister``."""
        self.zk.add_listener(self._on_state)
        threading.Thread(target=self._rejoin, name="rejoin", daemon=True).start()

    def _on_state(self, state: str) -> None:
        # kazoo calls listeners on its own thread, which must not wait on a request.
        if state == KazooState.LOST:
            log.warning(
                "ZooKeeper session lost: %s is unregistered until ZooKeeper returns; the work goes on",
                self.record.node_id,
            )
        elif state == KazooState.CONNECTED:
            self._reconnected.set()

    def _rejoin(self) -> None:
        while True:
            self._reconnected.wait()
            self._reconnected.clear()  # before trying: a reconnect meanwhile means one more pass
            if self._left:
                return
            delay = RETRY_FIRST
            while self.zk.connected and not self._left and not self._register_again(delay):
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _register_again(self, delay: float) -> bool:
        """One try of a rejoin; False if it is worth another in ``delay`` s."""
        record = self.record
        try:
            self.register()  # off the loop, a stale znode of ours can be waited out
        except DuplicateNode as exc:  # a live agent took our id while we were away
            log.error("cannot register again: %s", exc)
            return True
        except Exception as exc:  # KazooException, KazooTimeoutError
            log.warning("re-registration failed (%s); trying again in %.1f s", str(exc) or type(exc).__name__, delay)
            self.failed_rejoins += 1
            return False
        if self._left:  # deregister ran while our create was on its way
            tidy(self.zk, self.zk.delete_async, self.path)
        elif self.record is not record:  # set_state's write may have come before our create
            tidy(self.zk, self.zk.set_async, self.path, self.record.to_bytes())
        return True

    def set_state(self, state: str) -> None:
        """Publish ``state``; unreachable ZooKeeper postpones it to the rejoin, which writes the record."""
        if not isinstance(self.record, AgentRecord):
            raise TypeError("only an agent's record has a state")
        self.record = self.record.with_state(state)
        tidy(self.zk, self.zk.set_async, self.path, self.record.to_bytes())

    def deregister(self) -> None:
        """Remove our znode now; if ZooKeeper is unreachable, its session's expiry removes it."""
        self._left = True
        self.zk.remove_listener(self._on_state)  # closing the client is no lost session to report
        self._reconnected.set()  # ends the rejoin thread
        tidy(self.zk, self.zk.delete_async, self.path)


def _describe(data: bytes, record_type: type[AgentRecord] | type[RelayRecord]) -> str:
    try:
        other = record_type.from_bytes(data)
        return f"host {other.host}, pid {other.pid}, endpoint {other.endpoint}"
    except BadRecord:
        return "unreadable record"


def _holder_is_dead(data: bytes, record_type: type[AgentRecord] | type[RelayRecord]) -> bool:
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
