"""The agent's local queue policy, as a pure class.

It holds the tasks the coordinator sent that no worker has yet, and the jobs they
belong to with how long their tasks take. From those it decides how many tasks a
worker may hold (``depth``, and so the capacity the agent asks for), which worker
gets which tasks, which tasks go back to the coordinator, and which workers are stuck
with tasks queued behind a long one. Methods take ``now`` where time matters and the
worker pool's slots (agents/pool.py); the agent sends what they decide.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cluster.contract import wire
from cluster.runtime import loop

from .pool import Slot, WorkerPool
from .session import Doomed, Result

# A worker is handed several tasks at once only when its job's tasks are this short:
# then the message per task matters, and a slow task holds back few others.
PIPELINE_BELOW: Final = 0.005
PIPELINE_SAMPLES: Final = 3  # results seen before a job's tasks count as short
STEAL_AFTER: Final = 2 * PIPELINE_BELOW  # a worker silent this long with tasks queued behind is stuck
MESSAGE_BYTES: Final = 256 * 1024  # arguments per message to a worker, beyond its first task
LARGE_ARGS: Final = 64 * 1024  # a job with arguments this large gets no deep queues (see JobInfo.deep)
NEW_JOB: Final = 1.0  # seconds an untimed job with no task here still counts against deep queues


@dataclass(frozen=True)
class Assignment:
    plan: Mapping[int, list[QueuedTask]]  # slot index -> the tasks its worker gets now
    retire: Sequence[Slot]  # idle workers whose slots other jobs' tasks wait for


NO_ASSIGNMENT: Final = Assignment(MappingProxyType({}), ())


@dataclass(frozen=True)
class QueuedTask:
    job_id: str
    index: int
    attempt: int
    args: wire.Buffer

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job_id, self.index, self.attempt)


@dataclass
class JobInfo:
    digest: str
    options: dict[str, Any]  # as its workers get them: the coordinator's, and where the job lives here
    function: wire.Buffer
    domain: str  # its isolation domain: the workers of one serve no other (agents/worker.py, ``bind``)
    service: float = 0.0  # moving average of a task's time on a worker, seconds
    samples: int = 0
    large: bool = False  # a task of it carried LARGE_ARGS of arguments or more
    since: float = 0.0  # when its JobSpec came

    def note_service(self, seconds: float) -> None:
        self.service = seconds if not self.samples else 0.8 * self.service + 0.2 * seconds
        self.samples += 1

    @property
    def short(self) -> bool:
        return self.samples >= PIPELINE_SAMPLES and self.service < PIPELINE_BELOW

    @property
    def deep(self) -> bool:
        """Worth deep queues: short tasks whose arguments are small (deep queues of
        large ones would hold workers x prefetch_short of them in the agent's memory)."""
        return self.short and not self.large


class LocalQueue:
    def __init__(self, workers: int, *, prefetch: int, prefetch_short: int) -> None:
        self.workers = workers
        self.prefetch = prefetch
        self.deep_prefetch = max(prefetch, prefetch_short)
        self.depth = 1 + prefetch  # tasks one worker may hold (see retune)
        self.tasks: collections.deque[QueuedTask] = collections.deque()
        self.jobs: dict[str, JobInfo] = {}

    @property
    def capacity(self) -> int:
        """Tasks the agent asks to hold."""
        return self.workers * self.depth

    def held(self, slots: Iterable[Slot]) -> list[list[object]]:
        """[job, index, attempt] of every task queued here or given to a worker."""
        keys: list[list[object]] = [list(t.key) for t in self.tasks]
        keys += [list(t.key) for s in slots for t in s.tasks.values()]
        return keys

    def free(self, slots: Iterable[Slot]) -> int:
        """Tasks the agent could take beyond those it holds."""
        return max(0, self.capacity - len(self.tasks) - sum(len(s.tasks) for s in slots))

    # ------------------------------------------------------ what the coordinator sends

    def add_job(self, msg: wire.JobSpec, options: dict[str, Any], slots: Iterable[Slot], now: float) -> None:
        """A job's function and ``options``, which carry its isolation domain."""
        self.jobs[msg.job_id] = JobInfo(msg.digest, options, msg.frames[0], options["isolation"], since=now)
        self.retune(slots, now)

    def add_tasks(self, msg: wire.Dispatch, slots: Iterable[Slot], now: float) -> bool:
        """Queue a Dispatch's tasks; False (and nothing queued) when their job is unknown."""
        job = self.jobs.get(msg.job_id)
        if job is None:
            return False
        for (index, attempt), args in zip(msg.tasks, msg.frames):
            self.tasks.append(QueuedTask(msg.job_id, index, attempt, args))
            job.large = job.large or len(args) >= LARGE_ARGS
        if not job.deep and self.depth > 1 + self.prefetch:
            # Long tasks back among short ones, or large arguments: shallow queues now, not at the next flush.
            self.retune(slots, now)
        return True

    def end_job(self, job_id: str) -> str | None:
        """Forget a job; None if it was not known, else its domain. Its tasks are the
        caller's to drop."""
        job = self.jobs.pop(job_id, None)
        return job.domain if job is not None else None

    def domains(self) -> set[str]:
        """The isolation domains of the jobs open here."""
        return {job.domain for job in self.jobs.values()}

    def drop(self, doomed: Doomed) -> None:
        """Forget queued tasks for which ``doomed(job id, index)`` holds."""
        self.tasks = collections.deque(t for t in self.tasks if not doomed(t.job_id, t.index))

    def finished(
        self,
        pool: WorkerPool,
        slot: Slot,
        msg: wire.TasksDone,
        now: float,
        outbox: list[Result],
        outcomes: collections.Counter[str],
    ) -> list[tuple[QueuedTask, wire.Buffer]]:
        """A live worker's results: they leave the worker and go to ``outbox`` (counted by
        outcome in ``outcomes``), and time their job. A task whose function the worker
        evicted goes back to the head of the queue, to be sent with its function. Returned:
        the tasks whose function the worker could not load, with its error record, for the
        agent to report; they are neither run nor failed."""
        # Results that come back together share the time since the worker's last answer:
        # timing the first with all of it and the others with nothing would make a job
        # of 6 ms tasks look short every few batches.
        each = (now - slot.busy_since) / max(1, len(msg.items))
        jobs, again, unloadable = self.jobs, [], []
        for (job_id, index, attempt, status), body in zip(msg.items, msg.frames):
            key = (job_id, index, attempt)
            task = pool.done(slot, key)
            if task is None:
                continue  # cancelled, or charged with a timeout, while it ran: already answered
            job = jobs.get(job_id)
            if job is not None:
                job.note_service(each)
            slot.busy_since = now
            if status >= wire.NEED_FUNCTION:  # one comparison for the usual results
                if status == wire.NEED_FUNCTION:
                    slot.digests.clear()
                    again.append(task)
                    continue
                if status == wire.LOAD_FAILED:
                    unloadable.append((task, body))
                    continue
            outbox.append((key, status, body))
            outcomes[wire.OUTCOMES.get(status, "other")] += 1
        self.tasks.extendleft(reversed(again))
        return unloadable

    # -------------------------------------------------------------------- policy

    def retune(self, slots: Iterable[Slot], now: float) -> None:
        """Deeper queues while every job held has short tasks with small arguments: a
        message then carries several tasks on every hop. A job of longer (or not yet
        timed) tasks brings them back to ``prefetch``, so no slow task waits behind many
        others; so does one of large arguments, which the agent would hold too many of."""
        if len(self.jobs) == 1:
            deep = next(iter(self.jobs.values())).deep
        else:  # only jobs with tasks here count, and new ones whose tasks may be on their way
            # Runs at every flush: which jobs have tasks here is looked up only when some
            # job is not deep, and only for those.
            shallow = [job_id for job_id, job in self.jobs.items() if not job.deep]
            if shallow:
                held = {t.job_id for t in self.tasks} | {t.job_id for s in slots for t in s.tasks.values()}
                # A job kept open with a task or two run long ago (an Executor keeps idle jobs)
                # must not keep every other job's queues shallow for ever.
                fresh = now - NEW_JOB
                shallow = [
                    job_id
                    for job_id in shallow
                    if job_id in held
                    or self.jobs[job_id].samples < PIPELINE_SAMPLES
                    and self.jobs[job_id].since > fresh
                ]
            deep = bool(self.jobs) and not shallow
        self.depth = 1 + (self.deep_prefetch if deep else self.prefetch)

    def assign(self, slots: Sequence[Slot]) -> Assignment:
        """Which queued tasks each live worker gets now, by slot index (they leave the
        queue), and which idle workers to retire. A worker takes only tasks of its own
        domain, or any while it is fresh: one to each idle worker first; then, for jobs
        of short tasks, as many as fit (``depth``) to the least loaded worker, then the
        next, so that one message carries several tasks. Tasks left that no worker of
        their domain can take free idle workers of other domains: those are retired and
        restarted clean."""
        if not self.tasks:
            return NO_ASSIGNMENT
        live = [s for s in slots if WorkerPool.is_live(s)]
        bound = {s.index: s.domain for s in live}
        plan: dict[int, list[QueuedTask]] = {}
        for slot in live:
            if not slot.tasks and (task := self._take(bound[slot.index])) is not None:
                plan[slot.index] = [task]
                bound[slot.index] = self.jobs[task.job_id].domain
        for slot in sorted(live, key=lambda s: len(s.tasks) + len(plan.get(s.index, ()))):
            held = plan.setdefault(slot.index, [])
            domain = bound[slot.index]
            while len(slot.tasks) + len(held) < self.depth and (task := self._take_short(domain)) is not None:
                held.append(task)
        idle = [s for s in live if not s.tasks and not plan[s.index] and s.domain is not None]
        if not idle or not self.tasks:
            return Assignment(plan, ())
        waiting = {self.jobs[t.job_id].domain for t in self.tasks if t.job_id in self.jobs}
        return Assignment(plan, [s for s in idle if s.domain not in waiting][: len(self.tasks)])

    def _take(self, domain: str | None) -> QueuedTask | None:
        """The first queued task a worker of ``domain`` (None: a fresh one) may run."""
        head = self._head()
        if head is None or domain is None or head.domain == domain:
            return self.tasks.popleft() if head is not None else None
        for n, task in enumerate(self.tasks):  # jobs of several domains queued at once: rare
            job = self.jobs.get(task.job_id)
            if job is not None and job.domain == domain:
                del self.tasks[n]
                return task
        return None

    def _take_short(self, domain: str | None) -> QueuedTask | None:
        """The first queued task, if its job's tasks are short and of ``domain``."""
        head = self._head()
        return self.tasks.popleft() if head is not None and head.short and head.domain == domain else None

    def _head(self) -> JobInfo | None:
        """The job of the first queued task, dropping tasks whose job has ended."""
        while self.tasks:
            job = self.jobs.get(self.tasks[0].job_id)
            if job is not None:
                return job
            self.tasks.popleft()
        return None

    def give_back(self, slots: Iterable[Slot], draining: bool) -> Sequence[QueuedTask]:
        """Queued tasks to give back to the coordinator, taken off the queue's tail. When
        the capacity shrinks (see retune), those beyond it: they were sent on the deeper
        credit, and kept here they would wait behind each other while other agents have
        room (docs/design.md, "Credit that shrinks gives tasks back"). A draining agent
        gives back every task no worker has: another agent can start them now, and the
        drain ends when the tasks its workers hold are done. The caller puts them back at
        the tail if they cannot go."""
        if not self.tasks:
            return ()
        if draining:
            excess = len(self.tasks)
        else:
            assigned = sum(len(s.tasks) for s in slots)
            excess = min(len(self.tasks), len(self.tasks) + assigned - self.capacity)
        if excess <= 0:
            return ()
        return [self.tasks.pop() for _ in range(excess)][::-1]

    def stuck(self, slots: Sequence[Slot], now: float) -> Sequence[Slot]:
        """Workers to take the unstarted tasks off, to run elsewhere: those silent for
        STEAL_AFTER on a task with others queued behind it, while the queue is empty and
        another worker has nothing. Short tasks are pipelined on the strength of a guess,
        and a task much longer than its job's earlier ones must not hold up the tasks
        queued behind it."""
        if self.tasks or not any(len(s.tasks) > 1 for s in slots):
            return ()  # runs every loop turn: the common case costs one pass over the slots
        live = [s for s in slots if WorkerPool.is_live(s)]
        if all(s.tasks for s in live):
            return ()
        return [s for s in live if len(s.tasks) > 1 and now - s.busy_since >= STEAL_AFTER]


def worker_messages(tasks: list[QueuedTask]) -> Iterator[tuple[str, list[QueuedTask]]]:
    """(job id, tasks) runs of one job each, with at most MESSAGE_BYTES of arguments
    (or a single task): a worker starts on a message only once all of it has arrived,
    so large arguments go a few at a time."""
    for job_id, group in itertools.groupby(tasks, key=lambda t: t.job_id):
        for run in loop.batches(group, lambda t: len(t.args), MESSAGE_BYTES):
            yield job_id, run
