"""The agent's worker processes: an explicit state machine per slot.

    (spawn) -> STARTING --WorkerReady--> IDLE <--assign/done--> BUSY
    STARTING, IDLE, BUSY --process exited--> BACKOFF --due--> (spawn) STARTING

A worker that dies while starting backs off exponentially (a broken
environment must not fork-bomb the node); one that dies under a task is
restarted at once, because the task, not the worker, is the likely cause and
its retries are bounded by the coordinator. The pool converges on ``size``
live workers. OS calls go through ``spawn`` so the machine is testable with
fake processes and a given ``now``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import signal
import time
from typing import Any, Callable, Protocol

log = logging.getLogger("agents.pool")

STABLE_AFTER = 10.0  # a worker that lived this long resets its backoff
FIRST_BACKOFF = 0.5


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    BACKOFF = "backoff"


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


@dataclasses.dataclass
class Slot:
    index: int
    state: State = State.BACKOFF
    proc: Process | None = None
    identity: bytes = b""
    task: Any = None  # the task while BUSY; None once it was cancelled or timed out
    task_started: float = 0.0
    started: float = 0.0
    retry_at: float = 0.0
    backoff: float = 0.0
    digests: set[str] = dataclasses.field(default_factory=set)  # functions this worker has cached
    restarts: int = 0


@dataclasses.dataclass(frozen=True)
class Exit:
    slot: Slot
    task: Any  # the task it was running, or None
    reason: str


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        hint = " (killed: out of memory, or by hand)" if -code == signal.SIGKILL else ""
        return f"worker exited with signal {-code} ({name}){hint}"
    return f"worker exited with status {code}"


class WorkerPool:
    def __init__(self, size: int, spawn: Callable[[int], Process], *, backoff_max: float = 30.0):
        self.slots = [Slot(i) for i in range(size)]
        self._spawn = spawn
        self.backoff_max = backoff_max

    def converge(self, now: float) -> None:
        """Start every slot whose backoff has run out."""
        for slot in self.slots:
            if slot.state is State.BACKOFF and now >= slot.retry_at:
                try:
                    slot.proc = self._spawn(slot.index)
                except OSError as exc:
                    log.error("cannot start worker %d: %s", slot.index, exc)
                    self._back_off(slot, now, quick=True)
                    continue
                slot.state, slot.started, slot.identity = State.STARTING, now, b""
                slot.digests = set()

    def on_ready(self, index: int, pid: int, identity: bytes) -> bool:
        slot = self.slots[index] if 0 <= index < len(self.slots) else None
        if slot is None or slot.state is not State.STARTING or slot.proc is None or slot.proc.pid != pid:
            return False
        slot.state, slot.identity = State.IDLE, identity
        return True

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if s.state is State.IDLE]

    def by_identity(self, identity: bytes) -> Slot | None:
        for slot in self.slots:
            if slot.identity == identity and slot.state in (State.IDLE, State.BUSY):
                return slot
        return None

    def assign(self, slot: Slot, task: Any, now: float) -> None:
        slot.state, slot.task, slot.task_started = State.BUSY, task, now

    def busy(self) -> list[Slot]:
        return [s for s in self.slots if s.state is State.BUSY and s.task is not None]

    def done(self, slot: Slot) -> Any:
        task, slot.task, slot.state = slot.task, None, State.IDLE
        return task

    def reap(self, now: float) -> list[Exit]:
        """Notice dead workers at once (no heartbeat needed: we are their parent)."""
        exits = []
        for slot in self.slots:
            if slot.proc is None or slot.state is State.BACKOFF:
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            reason = exit_reason(code)
            exits.append(Exit(slot, slot.task, reason))
            log.warning("worker %d (pid %d) %s%s", slot.index, slot.proc.pid, reason,
                        " while running a task" if slot.task is not None else "")
            self._back_off(slot, now, quick=slot.state is State.STARTING or now - slot.started < STABLE_AFTER
                           and slot.task is None)
        return exits

    def kill(self, slot: Slot) -> None:
        """Stop a worker now (its task was cancelled or timed out); reap restarts it."""
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.kill()

    def _back_off(self, slot: Slot, now: float, *, quick: bool) -> None:
        slot.backoff = min(self.backoff_max, max(FIRST_BACKOFF, slot.backoff * 2)) if quick else 0.0
        slot.state, slot.task, slot.retry_at, slot.identity = State.BACKOFF, None, now + slot.backoff, b""
        slot.restarts += 1

    def alive(self) -> int:
        return sum(1 for s in self.slots if s.state in (State.IDLE, State.BUSY))

    def stop(self, grace: float = 3.0) -> None:
        """terminate, wait with a deadline, then kill: no worker outlives the agent."""
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except Exception:
                proc.kill()
                proc.wait()
        for slot in self.slots:
            slot.state, slot.proc = State.BACKOFF, None
