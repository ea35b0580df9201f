"""An agent's (or a relay's) ephemeral znode: register, refuse duplicates, update state, rejoin.

Registering is idempotent (a znode we own already counts as registered), so
``keep`` simply registers again whenever the connection comes back, in a thread
of its own: the daemon's loop makes no ZooKeeper request, because a slow or
vanishing ZooKeeper would stall its tasks and heartbeats. A znode held by another
*live* agent is a clear error. One left by a dead agent of this same host (a quick
restart after SIGKILL) is removed at once when its record proves the holder dead: the
same kernel boot and pid namespace as ours, and its pid gone or now another process's
(the kernel's start time of the process differs). A holder it cannot prove dead (a
record of an older release, or our own pid) is waited out until ZooKeeper expires its
session; another host's, or an unreadable record, is refused.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import os
import socket
import threading
import time
from pathlib import Path

import psutil
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

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
        self.record = dataclasses.replace(record, process_key=process_key())
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
            state = judge_holder(data, type(self.record))
            if state is Holder.DEAD:
                log.warning("id %s is held by a dead process (%s): replacing its record", self.record.node_id, holder)
                try:  # only the record we read: one written since (by a live process) stays
                    ask(zk.delete_async, self.path, stat.version)
                except (NoNodeError, BadVersionError):
                    pass
                continue
            if state is Holder.LIVE or time.monotonic() > deadline:
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


class Holder(enum.Enum):
    """What the process named in a znode's record is, as far as this host can tell."""

    LIVE = "live"  # or elsewhere, or unknown: refused
    EXPIRING = "expiring"  # dead (or ours) by what we see, not provably: its session is waited out
    DEAD = "dead"  # provably: its znode is replaced now


def judge_holder(data: bytes, record_type: type[AgentRecord] | type[RelayRecord]) -> Holder:
    try:
        other = record_type.from_bytes(data)
    except BadRecord:
        return Holder.LIVE
    if other.host != socket.gethostname():
        return Holder.LIVE
    if other.pid == os.getpid():
        return Holder.EXPIRING  # an earlier session of this very process, or another client of it
    namespace, _, start = other.process_key.rpartition("/")
    if other.pid > 0 and namespace and namespace == _pid_namespace():  # its pid means the same here as to it
        try:
            return Holder.LIVE if _start_ticks(other.pid) == start else Holder.DEAD
        except PermissionError:
            pass  # hidden from us (ProtectProc=invisible): another user's process, maybe the holder
    # An older release's record: ``started`` is the create time psutil gave it, to a clock that may have moved.
    try:
        reused = abs(psutil.Process(other.pid).create_time() - other.started) > 2.0
    except psutil.NoSuchProcess:
        reused = True
    return Holder.EXPIRING if reused else Holder.LIVE


def process_key() -> str:
    """This process for AgentRecord.process_key; "" where /proc does not say."""
    namespace = _pid_namespace()
    return f"{namespace}/{_start_ticks(os.getpid())}" if namespace else ""


@functools.cache
def _pid_namespace() -> str:
    """This kernel's boot and this process's pid namespace: where a pid names one process. The boot id
    tells apart machines that share a host name (their first pid namespaces have the same number)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat: psutil gives
    it only as wall-clock time, which moves when the clock is set); None if there is no such process
    (or a zombie). PermissionError: there is one, but /proc hides it (another user's, ProtectProc=invisible)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        try:
            os.kill(pid, 0)  # kill(2) sees a process /proc hides; signal 0 only asks
        except (ProcessLookupError, OverflowError):  # none, or a pid no process can have
            return None
        raise PermissionError(f"process {pid} is hidden") from None
    # Field 2, the command name, is in parentheses and may itself hold spaces and parentheses.
    state, *_, start = stat.rsplit(b")", 1)[1].split()[:20]
    return None if state in (b"Z", b"X") else start.decode()  # a zombie has exited: it only awaits its reaper
