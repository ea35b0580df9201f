"""The agent's worker processes: an explicit state machine per slot.

    (spawn) -> STARTING --WorkerReady--> IDLE <--assign/done--> BUSY
    STARTING, IDLE, BUSY --process exited--> BACKOFF --due--> (spawn) STARTING
    IDLE --retire--> (killed; restarted at once, clean)

A worker serves one job (``domain``: the isolation domain of its first task; None
while it is fresh) and is retired when the slot is wanted for another job, or its
job ends: a job never runs in a process another job has touched.

A BUSY worker may hold several tasks (short ones are pipelined, see the
agent); they run in the order given, and the worker's marker (marker.py) says
which one is running, so a death is charged to that task alone.

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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger("agents.pool")

STABLE_AFTER = 10.0  # a worker that lived this long resets its backoff
FIRST_BACKOFF = 0.5


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    BACKOFF = "backoff"


class Task(Protocol):
    key: tuple[Any, ...]


class RunningMarker(Protocol):
    def get(self) -> int: ...


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
    tasks: dict[int, Any] = dataclasses.field(default_factory=dict)  # seq -> task, in the order they run
    marker: RunningMarker | None = None
    running: int = 0  # seq of the task last seen running, and since when
    told: int = 0  # seq of the last task whose start the coordinator was told of
    task_started: float = 0.0
    busy_since: float = 0.0  # when the task now at the head started, as far as the agent can tell
    killed: bool = False  # the agent killed it: nothing it held is charged
    started: float = 0.0
    retry_at: float = 0.0
    backoff: float = 0.0
    digests: set[str] = dataclasses.field(default_factory=set)  # functions this worker has cached
    restarts: int = 0
    domain: str | None = None  # the job this process serves; None while it has run nothing
    retired: bool = False  # killed because the slot is wanted for another job: restarted at once
    retirements: int = 0


@dataclasses.dataclass(frozen=True)
class Exit:
    slot: Slot
    task: Any  # the task it was running, charged with its death; or None
    requeue: list[Any]  # tasks it held that did not kill it: they run again free
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
    def __init__(
        self,
        size: int,
        spawn: Callable[[int], Process],
        *,
        backoff_max: float = 30.0,
        markers: Sequence[RunningMarker] | None = None,
    ) -> None:
        self.slots = [Slot(i, marker=markers[i] if markers else None) for i in range(size)]
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
                slot.state, slot.started = State.STARTING, now
                slot.digests, slot.domain, slot.retired = set(), None, False

    def on_ready(self, index: int, pid: int) -> bool:
        slot = self.slots[index] if 0 <= index < len(self.slots) else None
        if slot is None or slot.state is not State.STARTING or slot.proc is None or slot.proc.pid != pid:
            return False
        slot.state = State.IDLE
        return True

    def live(self) -> list[Slot]:
        """Workers that said they are ready and have not died since."""
        return [s for s in self.slots if self.is_live(s)]

    @staticmethod
    def is_live(slot: Slot) -> bool:
        return slot.state in (State.IDLE, State.BUSY) and not slot.retired

    def assign(self, slot: Slot, seq: int, task: Any, now: float) -> None:
        if not slot.tasks:
            slot.running, slot.task_started, slot.busy_since = seq, now, now
        slot.tasks[seq] = task
        slot.state = State.BUSY

    def busy(self) -> list[Slot]:
        return [s for s in self.slots if s.tasks]

    def done(self, slot: Slot, key: tuple[Any, ...]) -> Any:
        """The task with this key leaves the worker; None if it was no longer its (cancelled)."""
        for seq, task in slot.tasks.items():
            if task.key == key:
                self.forget(slot, seq)
                return task
        return None

    def forget(self, slot: Slot, seq: int) -> None:
        """Stop expecting a task (cancelled, or already answered for); a late result is ignored."""
        slot.tasks.pop(seq, None)
        if not slot.tasks and slot.state is State.BUSY:
            slot.state = State.IDLE

    def running_seq(self, slot: Slot) -> int | None:
        """The seq of the task the worker is running now, if it is one it holds."""
        if slot.marker is None:  # no shared marker: a worker runs its oldest task first
            return next(iter(slot.tasks), None)
        seq = slot.marker.get()
        return seq if seq in slot.tasks else None

    def unstarted(self, slot: Slot) -> list[int]:
        """Seqs of the tasks queued in the worker behind the one it runs; none when
        it is between tasks (then it is unknown which of them are done)."""
        running = self.running_seq(slot)
        if running is None:
            return []
        seqs = list(slot.tasks)
        return seqs[seqs.index(running) + 1 :]

    def started(self) -> list[Any]:
        """The tasks workers are running now that were not reported yet, each reported
        once. Only the marker says a task started: a task that starts and ends between
        two looks is never reported, as its result says all (seqs only grow, so ``told``
        is one number)."""
        out = []
        for slot in self.slots:
            if slot.tasks and slot.marker is not None:
                seq = slot.marker.get()
                if seq > slot.told and seq in slot.tasks:
                    slot.told = seq
                    out.append(slot.tasks[seq])
        return out

    def awaiting_start(self) -> bool:
        """Whether a worker holds a task whose start was not reported yet."""
        return any(
            slot.tasks and slot.marker is not None and next(reversed(slot.tasks)) > slot.told for slot in self.slots
        )

    def observe(self, now: float) -> None:
        """Note when each busy worker moved on to its next task (timeouts count from then)."""
        for slot in self.slots:
            if slot.tasks:
                seq = self.running_seq(slot)
                if seq is not None and seq != slot.running:
                    slot.running, slot.task_started = seq, now

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
            seq = None if slot.killed else self.running_seq(slot)
            task = slot.tasks.get(seq) if seq is not None else None
            exits.append(Exit(slot, task, [t for t in slot.tasks.values() if t is not task], reason))
            if slot.retired:
                log.debug("worker %d (pid %d) retired from job %s", slot.index, slot.proc.pid, slot.domain)
                self._back_off(slot, now, quick=False, counted=False)
                continue
            log.warning(
                "worker %d (pid %d) %s%s",
                slot.index,
                slot.proc.pid,
                reason,
                " while running a task" if task is not None else "",
            )
            self._back_off(
                slot, now, quick=slot.state is State.STARTING or now - slot.started < STABLE_AFTER and task is None
            )
        return exits

    def kill(self, slot: Slot) -> None:
        """Stop a worker now (its task was cancelled or timed out); reap restarts it."""
        slot.killed = True
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.kill()

    def retire(self, slot: Slot) -> None:
        """Stop a worker whose job is over here, or whose slot another job wants; reap
        restarts it at once, clean. What it still holds runs again, on another worker."""
        if not slot.retired:
            slot.retired = True
            slot.retirements += 1
            self.kill(slot)

    def _back_off(self, slot: Slot, now: float, *, quick: bool, counted: bool = True) -> None:
        slot.backoff = min(self.backoff_max, max(FIRST_BACKOFF, slot.backoff * 2)) if quick else 0.0
        slot.state, slot.retry_at = State.BACKOFF, now + slot.backoff
        slot.tasks, slot.killed = {}, False
        slot.restarts += counted

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
