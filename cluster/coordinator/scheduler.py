"""The coordinator's task bookkeeping: no sockets, no clocks, no ZooKeeper.

It answers four questions for the loop that owns the sockets: which tasks go to
which agent now (credit-based, batched, fair across jobs), what happens to a
result (deliver, drop as a duplicate, or retry), what happens when an agent
is lost (its tasks go back to the front of the queue), and what each client is
owed. Exactly-once delivery lives here: a task leaves ``Job.tasks`` the moment
its first result is accepted, and any later result for it is dropped.

A job whose code was serialized by value (``options["python"]``, the Executor's) goes
only to agents on that Python minor version (or of a release that does not say which).
While every connected agent runs the Python of every such job, planning checks nothing;
only a mixed fleet pays, a little per planning round.

A node whose workers cannot load a job's function refuses the job (``refuse``): what it
held of it is queued again, counting as neither run nor failed, and no more of it goes
there. Planning looks at refusals only while some open job has one.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from cluster.contract import payload, wire
from cluster.coordinator.pythons import Pythons, minor

TaskKey = tuple[str, int, int]  # (job id, index, attempt)


@dataclasses.dataclass(slots=True)
class Task:
    args: wire.Buffer
    attempt: int = 0  # bumped at each dispatch, so late results of older attempts are recognised
    crashes: int = 0  # times its worker died under it
    losses: int = 0  # times its agent was lost while holding it
    node: str | None = None  # the agent running the current attempt
    queued: bool = False  # listed in its job's queue (entries of finished tasks are skipped lazily)
    ready_at: float = 0.0  # when it last entered the queue
    sent_at: float = 0.0  # when its current attempt was dispatched
    started: bool = False  # a worker was seen running it, and its client is (to be) told


@dataclasses.dataclass
class Job:
    job_id: str
    client: bytes
    function: wire.Buffer
    digest: str
    options: dict[str, Any]
    retries: int
    window: int = 10_000
    tasks: dict[int, Task] = dataclasses.field(default_factory=dict)
    queue: collections.deque[int] = dataclasses.field(default_factory=collections.deque)
    outbox: list[tuple[int, int, wire.Buffer]] = dataclasses.field(default_factory=list)
    started: list[int] = dataclasses.field(default_factory=list)  # tasks whose client is not told yet
    done: int = 0  # results delivered (on this leader), failed ones included
    failed: int = 0
    last_seen: float = 0.0
    python: str = ""  # the Python minor version its code loads on ("3.11"); "" for code that runs anywhere
    # Nodes that cannot load its function: node -> [node, exception type, message, traceback]
    refused: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class AgentSlot:
    node_id: str
    workers: int
    capacity: int
    in_flight: set[TaskKey] = dataclasses.field(default_factory=set)
    jobs: set[str] = dataclasses.field(default_factory=set)  # jobs whose JobSpec it has
    draining: bool = False
    python: str = ""  # its Python minor version ("3.12"); "" for an agent of a release that does not say

    def runs(self, job: Job) -> bool:
        return not (job.python and self.python and job.python != self.python) and self.node_id not in job.refused

    @property
    def free(self) -> int:
        return 0 if self.draining else max(0, self.capacity - len(self.in_flight))

    @property
    def refill(self) -> int:
        """The least prefetch credit worth a message: half of the agent's prefetch slots.
        One message per freed credit would make every hop carry one task at a time."""
        return max(1, (self.capacity - self.workers) // 2)


@dataclasses.dataclass(frozen=True)
class Batch:
    node_id: str
    job: Job
    send_spec: bool
    tasks: list[tuple[int, int, wire.Buffer]]  # (index, attempt, args)


ORPHAN_LIMIT = 100_000  # results kept for jobs this coordinator does not know (yet)


class Scheduler:
    def __init__(self, *, max_batch: int = 256, max_node_losses: int = 3):
        self.jobs: dict[str, Job] = {}
        # After a leader change, agents report tasks they still hold and send results
        # for jobs whose clients have not reconnected yet. Both are kept here so the
        # resubmitted tasks are matched to them instead of running again.
        self.orphan_results: collections.OrderedDict[tuple[str, int], tuple[int, wire.Buffer]] = (
            collections.OrderedDict()
        )
        self.orphan_held: dict[tuple[str, int], tuple[str, int]] = {}
        self.agents: dict[str, AgentSlot] = {}
        self.pythons = Pythons()  # which Python the agents run, which the jobs need (coordinator/pythons.py)
        # Agents that may have credit to use: plan() drops those that can take nothing and
        # whatever gives credit back adds them again, so a turn does not scan every agent.
        self._open: dict[str, None] = {}
        self.max_batch = max_batch
        self.max_node_losses = max_node_losses
        self._rotation: collections.deque[str] = collections.deque()  # jobs, for round-robin
        self.queued = 0
        self.refusing = 0  # open jobs some node refused: while none, planning does not look
        self.counters: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()  # delivered tasks by outcome
        # Time comes from the caller (the loop gives time.monotonic); the default keeps tests clock-free.
        self.clock: Callable[[], float] = lambda: 0.0
        # (queued -> dispatched, dispatched -> result) of delivered tasks, for whoever
        # drains it (the metrics exporter); None when nobody does, so it cannot grow.
        self.latencies: list[tuple[float, float]] | None = None

    # ------------------------------------------------------------------ jobs

    def add_job(
        self, job_id: str, client: bytes, function: wire.Buffer, digest: str, options: dict[str, Any], now: float
    ) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            retries = options.get("retries", 2)
            retries = retries if isinstance(retries, int) and 0 <= retries <= 100 else 2
            python = options.get("python")
            job = Job(job_id, client, function, digest, options, retries, last_seen=now)
            job.python = python if isinstance(python, str) else ""
            self.jobs[job_id] = job
            self._rotation.append(job_id)
            self.pythons.job(job.python, 1)
        job.client, job.last_seen = client, now  # a reconnecting client takes its job back
        return job

    def add_tasks(self, job: Job, indices: list[int], frames: tuple[wire.Buffer, ...]) -> int:
        """Queue new tasks; an index already known (a resubmission) is ignored."""
        added = 0
        for index, args in zip(indices, frames):
            if index in job.tasks:
                self.counters["duplicate_submissions"] += 1
                continue
            key = (job.job_id, index)
            task = job.tasks[index] = Task(args)
            if key in self.orphan_results:
                self._deliver(job, index, *self.orphan_results.pop(key))
                self.counters["orphan_results_used"] += 1
                continue
            held = self.orphan_held.pop(key, None)
            if held is not None and held[0] in self.agents:
                task.node, task.attempt = held  # still running where the old leader put it
                self.counters["orphan_tasks_adopted"] += 1
            else:
                self._enqueue(job, index, task)
            added += 1
        return added

    def cancel_tasks(self, job_id: str, indices: list[int]) -> dict[str, list[int]]:
        """Forget tasks the client cancelled; returns, by agent, those running there."""
        job = self.jobs.get(job_id)
        if job is None:
            return {}
        running: dict[str, list[int]] = collections.defaultdict(list)
        for index in indices:
            task = job.tasks.pop(index, None)
            if task is None:
                continue
            if task.queued:
                self.queued -= 1  # its queue entry is skipped when popped
            elif task.node is not None:  # always, for a task not queued: it runs there
                running[task.node].append(index)
                slot = self.agents.get(task.node)
                if slot is not None:
                    slot.in_flight.discard((job_id, index, task.attempt))
                    self._open[task.node] = None
        return dict(running)

    def end_job(self, job_id: str) -> list[str]:
        """Forget a job; returns the agents that must be told to drop it."""
        job = self.jobs.pop(job_id, None)
        for key in [k for k in self.orphan_results if k[0] == job_id]:
            del self.orphan_results[key]
        if job is None:
            return []
        self.pythons.job(job.python, -1)
        self.refusing -= bool(job.refused)
        self.queued -= sum(1 for task in job.tasks.values() if task.queued)
        nodes = [n for n, a in self.agents.items() if job_id in a.jobs]
        for agent in self.agents.values():
            agent.jobs.discard(job_id)
            # The agent drops the job's tasks without answering: free their credit now.
            held = len(agent.in_flight)
            agent.in_flight = {key for key in agent.in_flight if key[0] != job_id}
            if len(agent.in_flight) < held:
                self._open[agent.node_id] = None
        return nodes

    def pending(self, job_id: str) -> int:
        job = self.jobs.get(job_id)
        return len(job.tasks) if job else 0

    # ---------------------------------------------------------------- agents

    def agent_up(self, node_id: str, workers: int, capacity: int, held: list[list[Any]], python: str = "") -> None:
        """An agent answers; ``python``: its record's Python version ("" when it does not say)."""
        slot = AgentSlot(node_id, max(0, workers), max(0, capacity), python=minor(python))
        # Tasks it already holds use its credit until their results come back.
        slot.in_flight = {(str(j), int(i), int(a)) for j, i, a in held}
        old = self.agents.get(node_id)
        if old is not None:
            self.pythons.agent(old.python, -1)
        self.agents[node_id] = slot
        self.pythons.agent(slot.python, 1)
        self._open[node_id] = None
        for job_id, index, attempt in slot.in_flight:
            if job_id not in self.jobs:
                self.orphan_held[(job_id, index)] = (node_id, attempt)

    def agent_python(self, node_id: str, python: str) -> None:
        """A connected agent's record names another Python (it was replaced, and its record came after its Welcome)."""
        slot = self.agents.get(node_id)
        if slot is None or slot.python == minor(python):
            return
        self.pythons.agent(slot.python, -1)
        slot.python = minor(python)
        self.pythons.agent(slot.python, 1)
        self._open[node_id] = None

    def agent_capacity(self, node_id: str, capacity: int) -> None:
        slot = self.agents.get(node_id)
        if slot is not None and capacity > 0:
            slot.capacity = capacity
            self._open[node_id] = None

    def agent_draining(self, node_id: str) -> None:
        if node_id in self.agents:
            self.agents[node_id].draining = True

    def agent_down(self, node_id: str) -> int:
        """Requeue what a lost agent held; returns how many tasks went back."""
        slot = self.agents.pop(node_id, None)
        self._open.pop(node_id, None)
        if slot is None:
            return 0
        self.pythons.agent(slot.python, -1)
        for key in [k for k, (node, _) in self.orphan_held.items() if node == node_id]:
            del self.orphan_held[key]
        requeued = 0
        for job_id, index, attempt in slot.in_flight:
            job = self.jobs.get(job_id)
            task = job.tasks.get(index) if job else None
            if job is None or task is None or task.node != node_id or task.attempt != attempt:
                continue
            task.node = None
            task.losses += 1
            if task.losses > job.retries + self.max_node_losses:
                reason = f"the node running it was lost {task.losses} times (last: {node_id})"
                self._deliver(job, index, wire.LOST, payload.lost_error(reason))
            else:
                self._enqueue(job, index, task, front=True)
                requeued += 1
        return requeued

    # --------------------------------------------------------------- results

    def on_result(
        self, node_id: str, job_id: str, index: int, attempt: int, status: int, frame: wire.Buffer
    ) -> bool | None:
        """Take a result. For a worker death of the task's current attempt, returns whether
        the task is retried; None otherwise."""
        slot = self.agents.get(node_id)
        if slot is not None:
            slot.in_flight.discard((job_id, index, attempt))
            self._open[node_id] = None
        job = self.jobs.get(job_id)
        if job is None:
            if status in (wire.OK, wire.ERROR):
                self._keep_orphan(job_id, index, status, frame)
            return None
        task = job.tasks.get(index)
        if task is None:
            self.counters["duplicate_results"] += 1
            return None
        if status in (wire.OK, wire.ERROR):
            self._deliver(job, index, status, frame)
        elif status == wire.LOST and attempt == task.attempt and task.node == node_id:
            task.node = None
            task.crashes += 1
            if task.crashes > job.retries:
                self._deliver(job, index, wire.LOST, frame)
                return False
            self._enqueue(job, index, task, front=True)
            self.counters["retries"] += 1
            return True
        else:
            self.counters["stale_results"] += 1
        return None

    def on_returned(self, node_id: str, job_id: str, index: int, attempt: int) -> bool:
        """An agent gives back a task it has not started: queue it again at the front,
        costing it no retry. False (and nothing changes but the agent's credit) when
        that attempt is not the task's current one, or the task is done."""
        slot = self.agents.get(node_id)
        if slot is not None:
            slot.in_flight.discard((job_id, index, attempt))
            self._open[node_id] = None
        if self.orphan_held.get((job_id, index)) == (node_id, attempt):
            del self.orphan_held[(job_id, index)]  # its client's resubmission must queue it, not adopt it
        job = self.jobs.get(job_id)
        task = job.tasks.get(index) if job else None
        if job is None or task is None or task.node != node_id or task.attempt != attempt or task.queued:
            return False
        task.node = None
        self._enqueue(job, index, task, front=True)
        self.counters["returned"] += 1
        return True

    def refuse(self, node_id: str, job_id: str, error: list[str]) -> bool:
        """The node cannot load the job's function (``error``: [node, type, message,
        traceback]). What it held of the job is queued again at the front, costing no retry,
        and no more of the job goes there. Returns whether this is news: the node's first
        refusal of an open job."""
        slot = self.agents.get(node_id)
        held: list[TaskKey] = []
        if slot is not None:
            slot.jobs.discard(job_id)
            held = sorted((key for key in slot.in_flight if key[0] == job_id), reverse=True)
            slot.in_flight.difference_update(held)
            self._open[node_id] = None
        job = self.jobs.get(job_id)
        if job is None:
            return False
        for _, index, attempt in held:  # each goes to the front: the lowest index ends first
            task = job.tasks.get(index)
            if task is not None and task.node == node_id and task.attempt == attempt and not task.queued:
                task.node = None
                self._enqueue(job, index, task, front=True)
                self.counters["requeued_unloadable"] += 1
        if node_id in job.refused:
            return False
        self.refusing += not job.refused
        job.refused[node_id] = error
        return True

    def fail_tasks(self, job: Job, frame: wire.Buffer) -> int:
        """Deliver every task of the job not done yet as failed with ``frame``; returns how many."""
        indices = list(job.tasks)
        for index in indices:
            self._deliver(job, index, wire.ERROR, frame)
        return len(indices)

    def _enqueue(self, job: Job, index: int, task: Task, front: bool = False) -> None:
        (job.queue.appendleft if front else job.queue.append)(index)
        task.queued = True
        task.ready_at = self.clock()
        self.queued += 1

    def _keep_orphan(self, job_id: str, index: int, status: int, frame: wire.Buffer) -> None:
        self.orphan_held.pop((job_id, index), None)
        self.orphan_results[(job_id, index)] = (status, frame)
        self.counters["orphan_results"] += 1
        while len(self.orphan_results) > ORPHAN_LIMIT:
            self.orphan_results.popitem(last=False)  # oldest first: its client is likely gone

    def _deliver(self, job: Job, index: int, status: int, frame: wire.Buffer) -> None:
        task = job.tasks.pop(index)
        if task.queued:
            self.queued -= 1  # still listed in the queue; skipped lazily when popped
        job.outbox.append((index, status, frame))
        if self.latencies is not None and task.sent_at:
            self.latencies.append((task.sent_at - task.ready_at, self.clock() - task.sent_at))
        self.counters["delivered"] += 1
        self.outcomes[wire.OUTCOMES.get(status, "other")] += 1
        job.done += 1
        if status != wire.OK:
            job.failed += 1

    def on_started(self, node_id: str, started: list[list[Any]]) -> None:
        """An agent saw these tasks running: their clients are told once, whatever happens
        to the attempt later. A report of another attempt or another agent is stale."""
        for job_id, index, attempt in started:
            job = self.jobs.get(job_id)
            task = job.tasks.get(index) if job is not None else None
            if job is None or task is None or task.started or task.node != node_id or task.attempt != attempt:
                continue
            task.started = True
            job.started.append(index)

    def outboxes(self) -> Iterator[Job]:
        """Jobs whose clients are owed results or news of started tasks."""
        for job in self.jobs.values():
            if job.outbox or job.started:
                yield job

    # --------------------------------------------------------------- dispatch

    def plan(self) -> list[Batch]:
        """Hand queued tasks to agents with credit: idle workers first, across
        all agents, then prefetch slots, so a short job spreads over the cluster
        instead of filling the first agent's queue."""
        if self.queued <= 0 or not self._open:
            return []
        grants: dict[str, int] = {}
        budget = self.queued
        # In a mixed fleet an agent is granted no more than it may run, or it would take the
        # budget of agents that can run what it cannot.
        runnable = self.pythons.runnable(self.jobs.values()) if self.pythons.mixed else None
        looked: list[AgentSlot] = []  # seen in the prefetch phase: every chance they had this round
        for phase in ("idle", "prefetch"):
            for node_id in self._open:
                if budget <= 0:
                    break
                slot = self.agents[node_id]
                if phase == "prefetch":
                    looked.append(slot)
                have = grants.get(node_id, 0)
                limit = slot.free - have
                if phase == "idle":
                    limit = min(limit, slot.workers - len(slot.in_flight) - have)
                elif not have and limit < slot.refill:
                    continue  # its queue is still half full: top it up later, in one batch
                if runnable is not None:
                    limit = min(limit, runnable.get(slot.python, limit))
                if self.refusing:  # nor tasks of jobs it refused
                    limit = min(limit, sum(len(j.queue) for j in self.jobs.values() if node_id not in j.refused))
                take = min(max(0, limit), budget)
                if take:
                    grants[node_id] = have + take
                    budget -= take
                    if runnable is not None and slot.python in runnable:
                        runnable[slot.python] -= take
        batches: list[Batch] = []
        now = self.clock()
        for node_id, count in grants.items():
            batches.extend(self._fill(self.agents[node_id], count, now))
        for slot in looked:
            if not slot.free or (slot.free < slot.refill and len(slot.in_flight) >= slot.workers):
                del self._open[slot.node_id]  # it would take nothing until credit comes back
        return batches

    def _fill(self, slot: AgentSlot, count: int, now: float) -> list[Batch]:
        batches = []
        misses = 0  # a full turn of the rotation with nothing taken ends the fill
        while count > 0 and self._rotation and misses <= len(self._rotation):
            job_id = self._rotation[0]
            self._rotation.rotate(-1)
            job = self.jobs.get(job_id)
            if job is None:
                self._rotation.remove(job_id)
                continue
            if (self.pythons.mixed or self.refusing) and not slot.runs(job):
                misses += 1
                continue
            tasks = self._take(job, slot.node_id, min(count, self.max_batch), now)
            if not tasks:
                misses += 1
                continue
            misses = 0
            count -= len(tasks)
            batches.append(Batch(slot.node_id, job, job.job_id not in slot.jobs, tasks))
            slot.jobs.add(job.job_id)
            for index, attempt, _ in tasks:
                slot.in_flight.add((job.job_id, index, attempt))
        return batches

    def _take(self, job: Job, node_id: str, limit: int, now: float) -> list[tuple[int, int, wire.Buffer]]:
        out: list[tuple[int, int, wire.Buffer]] = []
        while job.queue and len(out) < limit:
            index = job.queue.popleft()
            task = job.tasks.get(index)
            if task is None or not task.queued:
                continue  # delivered or cancelled meanwhile: a stale queue entry
            task.queued = False
            task.attempt += 1
            task.node = node_id
            task.sent_at = now
            self.queued -= 1
            out.append((index, task.attempt, task.args))
        return out
