"""The worker pool state machine with fake processes and a given clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from agents.agent import QueuedTask
from agents.pool import FIRST_BACKOFF, State, WorkerPool, exit_reason


@dataclass(frozen=True)
class Task:
    key: tuple


class FakeMarker:
    """Stands in for the shared running marker a real worker writes."""

    value = 0

    def get(self):
        return self.value


class FakeProc:
    pids = itertools.count(100)

    def __init__(self):
        self.pid = next(self.pids)
        self.code = None

    def poll(self):
        return self.code

    def terminate(self):
        self.code = -15

    def kill(self):
        self.code = -9

    def wait(self, timeout=None):
        return self.code


def make(size=2, markers=None):
    procs = []

    def spawn(index):
        proc = FakeProc()
        procs.append(proc)
        return proc

    return WorkerPool(size, spawn, backoff_max=8.0, markers=markers), procs


def ready_slot(pool, procs):
    pool.converge(0.0)
    pool.on_ready(0, procs[0].pid)
    return pool.slots[0]


def test_converges_on_size_and_becomes_idle_on_ready():
    pool, procs = make(2)
    pool.converge(0.0)
    assert [s.state for s in pool.slots] == [State.STARTING] * 2
    assert not pool.on_ready(0, 99999)  # wrong pid: ignored
    assert pool.on_ready(0, procs[0].pid) and pool.on_ready(1, procs[1].pid)
    assert len(pool.live()) == 2


def test_death_under_a_task_reports_it_and_restarts_at_once():
    pool, procs = make(1)
    slot = ready_slot(pool, procs)
    task = Task(("j", 1, 1))
    pool.assign(slot, 7, task, 0.5)
    procs[0].code = -9
    (ex,) = pool.reap(1.0)
    assert ex.task == task and ex.requeue == [] and "signal 9 (SIGKILL)" in ex.reason
    pool.converge(1.0)
    assert slot.state is State.STARTING and len(procs) == 2 and not slot.tasks


def test_a_death_is_charged_to_the_task_the_marker_names_and_the_others_run_again():
    marker = FakeMarker()
    pool, procs = make(1, [marker])
    slot = ready_slot(pool, procs)
    tasks = [Task(("j", i, 1)) for i in range(3)]
    for seq, task in zip((11, 12, 13), tasks):
        pool.assign(slot, seq, task, 0.0)
    assert pool.done(slot, ("j", 0, 1)) == tasks[0]
    assert pool.done(slot, ("j", 0, 1)) is None  # answered once only
    marker.value = 12  # the worker runs the second; the third waits behind it
    procs[0].code = -9
    (ex,) = pool.reap(1.0)
    assert ex.task == tasks[1] and ex.requeue == [tasks[2]]


def test_a_death_between_tasks_or_by_the_agents_hand_charges_nobody():
    marker = FakeMarker()
    pool, procs = make(1, [marker])
    slot = ready_slot(pool, procs)
    pool.assign(slot, 1, Task(("j", 0, 1)), 0.0)
    pool.assign(slot, 2, Task(("j", 1, 1)), 0.0)
    marker.value = 0  # between tasks: the first's result may have died unsent
    procs[0].code = -9
    (ex,) = pool.reap(1.0)
    assert ex.task is None and [t.key for t in ex.requeue] == [("j", 0, 1), ("j", 1, 1)]

    pool.converge(5.0)
    pool.on_ready(0, procs[1].pid)
    pool.assign(slot, 3, Task(("j", 2, 1)), 5.0)
    pool.assign(slot, 4, Task(("j", 3, 1)), 5.0)
    marker.value = 3
    pool.forget(slot, 3)  # the agent answered for it (a timeout) and kills the worker
    pool.kill(slot)
    marker.value = 4  # the worker moved on before the signal landed: still not its fault
    (ex,) = pool.reap(5.1)
    assert ex.task is None and [t.key for t in ex.requeue] == [("j", 3, 1)]


def test_observe_times_each_task_from_when_the_worker_reached_it():
    marker = FakeMarker()
    pool, procs = make(1, [marker])
    slot = ready_slot(pool, procs)
    pool.assign(slot, 1, Task(("j", 0, 1)), 1.0)
    pool.assign(slot, 2, Task(("j", 1, 1)), 1.0)
    assert (slot.running, slot.task_started) == (1, 1.0)
    marker.value = 1
    pool.observe(2.0)
    assert (slot.running, slot.task_started) == (1, 1.0)
    pool.done(slot, ("j", 0, 1))
    marker.value = 2
    pool.observe(3.0)
    assert (slot.running, slot.task_started) == (2, 3.0)
    pool.done(slot, ("j", 1, 1))
    assert slot.state is State.IDLE


def test_crash_while_starting_backs_off_exponentially_up_to_the_cap():
    pool, procs = make(1)
    now = 0.0
    delays = []
    for _ in range(6):
        pool.converge(now)
        procs[-1].code = 1
        pool.reap(now)
        delays.append(pool.slots[0].retry_at - now)
        pool.converge(now)  # not due yet: no new process
        now = pool.slots[0].retry_at
    assert delays == [FIRST_BACKOFF, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(procs) == 6


def test_stop_terminates_every_live_worker():
    pool, procs = make(3)
    pool.converge(0.0)
    pool.stop(grace=0.1)
    assert all(p.code == -15 for p in procs)


def test_exit_reasons():
    assert exit_reason(3) == "worker exited with status 3"
    assert exit_reason(-11) == "worker exited with signal 11 (SIGSEGV)"


def test_a_job_is_short_after_three_quick_results_and_stops_being_short_at_once():
    from agents.agent import JobInfo

    job = JobInfo("d", {}, b"")
    for _ in range(2):
        job.note_service(0.001)
    assert not job.short  # not timed enough yet
    job.note_service(0.001)
    assert job.short
    job.note_service(0.3)  # one slow task: stop pipelining now, not after many
    assert not job.short
    steady = JobInfo("d", {}, b"")
    for _ in range(50):
        steady.note_service(0.006)  # 6 ms tasks, each timed with its share of a batch
    assert not steady.short


def test_deep_queues_only_for_short_tasks_with_small_arguments():
    """An agent asks for workers x (1 + prefetch_short) tasks only while its jobs are short
    and their arguments small: deep queues of 1 MiB arguments would sit in its memory."""
    from agents.agent import LARGE_ARGS, Agent
    from cluster.contract import wire
    from cluster.contract.config import AgentConfig

    agent = Agent(AgentConfig(workers="2", insecure=True, prefetch=2, prefetch_short=16))
    agent.pool = WorkerPool(2, lambda index: None)
    assert agent.capacity == 2 * 3
    agent._on_job_spec(b"", wire.JobSpec(1, "small", "d1", {}, frames=(b"fn",)))
    for _ in range(3):
        agent.jobs["small"].note_service(0.001)
    agent._retune()
    assert agent.capacity == 2 * 17
    agent._on_job_spec(b"", wire.JobSpec(1, "large", "d2", {}, frames=(b"fn",)))
    for _ in range(3):
        agent.jobs["large"].note_service(0.001)
    agent._on_dispatch(b"", wire.Dispatch(1, "large", [[0, 1]], frames=(b"x" * LARGE_ARGS,)))
    assert agent.jobs["large"].short and not agent.jobs["large"].deep
    assert agent.capacity == 2 * 3  # its tasks are held here: back to prefetch


def test_an_idle_job_timed_by_a_task_or_two_long_ago_does_not_keep_queues_shallow():
    from agents.agent import NEW_JOB, Agent
    from cluster.contract import wire
    from cluster.contract.config import AgentConfig

    agent = Agent(AgentConfig(workers="2", insecure=True, prefetch=2, prefetch_short=16))
    agent.pool = WorkerPool(2, lambda index: None)
    agent._on_job_spec(b"", wire.JobSpec(1, "once", "d1", {}, frames=(b"fn",)))
    agent.jobs["once"].note_service(0.001)  # one task, then nothing: an Executor keeps the job open
    agent._on_job_spec(b"", wire.JobSpec(1, "busy", "d2", {}, frames=(b"fn",)))
    for _ in range(3):
        agent.jobs["busy"].note_service(0.001)
    agent.queue.append(QueuedTask("busy", 0, 1, b"x"))
    agent._retune()
    assert agent.capacity == 2 * 3  # "once" is new: its tasks may be on their way, untimed
    agent.jobs["once"].since -= NEW_JOB + 0.1
    agent._retune()
    assert agent.capacity == 2 * 17
