"""The agent's local queue policy (agents/local_queue.py) with plain slots and given times:
how deep workers' queues go, which worker gets which task, what goes back to the
coordinator and what leaves a stuck worker."""

from __future__ import annotations

import collections

from agents.local_queue import LARGE_ARGS, NEW_JOB, STEAL_AFTER, JobInfo, LocalQueue, QueuedTask
from agents.pool import Slot, State, WorkerPool
from cluster.contract import wire

FN = (b"fn",)


def queue(workers: int = 2) -> LocalQueue:
    return LocalQueue(workers, prefetch=2, prefetch_short=16)


def idle(count: int) -> list[Slot]:
    return [Slot(i, state=State.IDLE) for i in range(count)]


def job(
    q: LocalQueue, slots: list[Slot], job_id: str, now: float = 0.0, timed: int = 0, seconds: float = 0.001
) -> JobInfo:
    """A job whose JobSpec came at ``now``, with ``timed`` results of ``seconds`` seen."""
    q.add_job(wire.JobSpec(1, job_id, f"digest-{job_id}", {}, frames=FN), {"isolation": job_id}, slots, now)
    for _ in range(timed):
        q.jobs[job_id].note_service(seconds)
    return q.jobs[job_id]


def dispatch(q: LocalQueue, slots: list[Slot], job_id: str, count: int, now: float = 0.0, size: int = 1) -> None:
    tasks = [[i, 1] for i in range(count)]
    assert q.add_tasks(wire.Dispatch(1, job_id, tasks, frames=tuple(b"x" * size for _ in tasks)), slots, now)


def busy(slot: Slot, job_id: str, count: int, since: float) -> None:
    """The worker holds ``count`` tasks, the first running since ``since``."""
    slot.tasks = {seq: QueuedTask(job_id, 100 + seq, 1, b"") for seq in range(1, count + 1)}
    slot.state, slot.busy_since = State.BUSY, since


def test_a_job_is_short_after_three_quick_results_and_stops_being_short_at_once():
    job = JobInfo("d", {}, b"", "d")
    for _ in range(2):
        job.note_service(0.001)
    assert not job.short  # not timed enough yet
    job.note_service(0.001)
    assert job.short
    job.note_service(0.3)  # one slow task: stop pipelining now, not after many
    assert not job.short
    steady = JobInfo("d", {}, b"", "d")
    for _ in range(50):
        steady.note_service(0.006)  # 6 ms tasks, each timed with its share of a batch
    assert not steady.short


def test_deep_queues_only_for_short_tasks_with_small_arguments():
    """An agent asks for workers x (1 + prefetch_short) tasks only while its jobs are short
    and their arguments small: deep queues of 1 MiB arguments would sit in its memory."""
    q, slots = queue(), idle(2)
    assert q.capacity == 2 * 3
    job(q, slots, "small", timed=3)
    q.retune(slots, 0.0)
    assert q.capacity == 2 * 17
    job(q, slots, "large", timed=3)
    q.retune(slots, 0.0)
    assert q.capacity == 2 * 17  # both short, arguments small so far
    dispatch(q, slots, "large", 1, size=LARGE_ARGS)
    assert q.jobs["large"].short and not q.jobs["large"].deep
    assert q.capacity == 2 * 3  # its tasks are held here: back to prefetch, at once


def test_a_job_of_untimed_or_long_tasks_keeps_queues_shallow():
    q, slots = queue(), idle(2)
    job(q, slots, "new")
    assert q.capacity == 2 * 3  # not timed yet
    q.jobs["new"].note_service(0.001)
    q.jobs["new"].note_service(0.001)
    q.jobs["new"].note_service(0.001)
    q.retune(slots, 0.0)
    assert q.capacity == 2 * 17
    q.jobs["new"].note_service(0.3)
    dispatch(q, slots, "new", 1)  # a long task among short ones: shallow now, not at the next flush
    assert q.capacity == 2 * 3


def test_an_idle_job_timed_by_a_task_or_two_long_ago_does_not_keep_queues_shallow():
    q, slots = queue(), idle(2)
    job(q, slots, "once", now=100.0, timed=1)  # one task, then nothing: an Executor keeps the job open
    job(q, slots, "busy", now=100.0, timed=3)
    dispatch(q, slots, "busy", 1, now=100.0)
    q.retune(slots, 100.0)
    assert q.capacity == 2 * 3  # "once" is new: its tasks may be on their way, untimed
    q.retune(slots, 100.0 + NEW_JOB + 0.1)
    assert q.capacity == 2 * 17
    dispatch(q, slots, "once", 1, now=100.0 + NEW_JOB + 0.2)
    assert q.capacity == 2 * 3  # its tasks are here again: untimed ones count, at once


def test_each_idle_worker_gets_one_task_and_only_short_tasks_go_deep():
    q, slots = queue(), idle(2)
    job(q, slots, "long", timed=3, seconds=0.5)
    dispatch(q, slots, "long", 5)
    plan = q.assign(slots).plan
    assert {i: [t.index for t in tasks] for i, tasks in plan.items()} == {0: [0], 1: [1]}
    assert len(q.tasks) == 3

    q, slots = queue(), idle(2)
    job(q, slots, "short", timed=3)
    q.retune(slots, 0.0)
    dispatch(q, slots, "short", 40)
    plan = q.assign(slots).plan
    # One each first, then the least loaded worker is filled to the depth, then the next.
    assert {i: [t.index for t in tasks] for i, tasks in plan.items()} == {
        0: [0, *range(2, 18)],
        1: [1, *range(18, 34)],
    }
    assert not q.assign([Slot(0, state=State.STARTING)]).plan  # only live workers get tasks


def test_tasks_beyond_a_shrunk_capacity_go_back_and_a_draining_agent_gives_back_all_it_queued():
    q, slots = queue(1), idle(1)
    job(q, slots, "short", timed=3)
    q.retune(slots, 0.0)
    assert q.capacity == 17
    busy(slots[0], "short", 1, since=0.0)
    dispatch(q, slots, "short", 16)  # sent on the deep credit: 1 on the worker, 16 queued
    assert not q.give_back(slots, draining=False)  # at capacity: nothing goes back
    job(q, slots, "long", now=1.0)  # untimed: back to 1 x 3
    assert q.capacity == 3
    back = q.give_back(slots, draining=False)
    assert [t.index for t in back] == list(range(2, 16))  # the tail, in order
    assert [t.index for t in q.tasks] == [0, 1]  # with the worker's one, 3
    assert not q.give_back(slots, draining=False)
    back = q.give_back(slots, draining=True)
    assert [t.index for t in back] == [0, 1] and not q.tasks


def test_tasks_move_off_a_worker_stuck_behind_a_long_task_only_when_another_is_idle():
    q, slots = queue(), idle(2)
    busy(slots[0], "j", 3, since=0.0)
    assert not q.stuck(slots, STEAL_AFTER / 2)  # not silent long enough
    assert q.stuck(slots, STEAL_AFTER) == [slots[0]]
    q.tasks.append(QueuedTask("j", 0, 1, b""))
    assert not q.stuck(slots, STEAL_AFTER)  # the idle worker gets a queued task instead
    q.tasks.clear()
    busy(slots[1], "j", 1, since=0.0)
    assert not q.stuck(slots, STEAL_AFTER)  # nobody idle to take them
    slots[1].tasks.clear()
    slots[1].state = State.BACKOFF
    assert not q.stuck(slots, STEAL_AFTER)  # a dead worker takes nothing
    busy(slots[0], "j", 1, since=0.0)
    slots[1].state = State.IDLE
    assert not q.stuck(slots, STEAL_AFTER)  # one task and nothing behind it: nothing to move


def one_ready_worker():
    """A pool of one worker that said it is ready, and its slot."""

    class Proc:
        pid = 1

        def poll(self):
            return None

    pool = WorkerPool(1, lambda index: Proc())
    pool.converge(0.0)
    pool.on_ready(0, 1)
    return pool, pool.slots[0]


def test_results_that_come_back_together_share_the_time_since_the_last_answer():
    pool, slot = one_ready_worker()
    q = queue(1)
    job(q, pool.slots, "j")
    tasks = [QueuedTask("j", i, 1, b"") for i in range(3)]
    for seq, task in enumerate(tasks, 1):
        pool.assign(slot, seq, task, 1.0)
    slot.digests.add("digest-j")
    outbox: list = []
    outcomes: collections.Counter = collections.Counter()
    items = [["j", 0, 1, wire.OK], ["j", 1, 1, wire.NEED_FUNCTION], ["j", 2, 1, wire.ERROR]]
    unloadable = q.finished(pool, slot, wire.TasksDone(items, frames=(b"r0", b"", b"e2")), 1.018, outbox, outcomes)
    assert q.jobs["j"].samples == 3 and abs(q.jobs["j"].service - 0.006) < 1e-9  # 18 ms over 3, not 18 + 0 + 0
    assert outbox == [(("j", 0, 1), wire.OK, b"r0"), (("j", 2, 1), wire.ERROR, b"e2")]
    assert outcomes == {"ok": 1, "error": 1}
    assert list(q.tasks) == [tasks[1]]  # its worker evicted the function: it goes again, first
    assert not slot.tasks and not slot.digests and slot.busy_since == 1.018
    assert unloadable == []


def test_a_task_whose_function_does_not_load_is_neither_run_nor_failed_but_handed_to_the_agent():
    pool, slot = one_ready_worker()
    q = queue(1)
    job(q, pool.slots, "j")
    task = QueuedTask("j", 0, 1, b"")
    pool.assign(slot, 1, task, 1.0)
    outbox: list = []
    outcomes: collections.Counter = collections.Counter()
    done = wire.TasksDone([["j", 0, 1, wire.LOAD_FAILED]], frames=(b"record",))
    assert q.finished(pool, slot, done, 1.1, outbox, outcomes) == [(task, b"record")]
    assert outbox == [] and not outcomes and not slot.tasks and not q.tasks


def test_a_worker_takes_only_tasks_of_its_own_job_and_a_fresh_one_takes_any():
    q, slots = queue(), idle(3)
    job(q, slots, "a")
    job(q, slots, "b")
    slots[0].domain, slots[1].domain = "a", "b"  # slot 2 is fresh: it has run nothing yet
    dispatch(q, slots, "b", 1)
    dispatch(q, slots, "a", 1)
    plan = q.assign(slots).plan
    # Slot 0 takes a's task from behind b's; slot 1 b's; the fresh one finds nothing left.
    assert {i: [t.job_id for t in tasks] for i, tasks in plan.items() if tasks} == {0: ["a"], 1: ["b"]}

    q, slots = queue(), idle(1)
    job(q, slots, "a")
    dispatch(q, slots, "a", 1)
    assert [t.job_id for t in q.assign(slots).plan[0]] == ["a"]  # fresh: it takes any job


def test_an_idle_worker_of_another_job_is_retired_for_tasks_that_wait():
    q, slots = queue(), idle(2)
    job(q, slots, "a")
    job(q, slots, "b")
    slots[0].domain = slots[1].domain = "a"
    dispatch(q, slots, "b", 1)
    assignment = q.assign(slots)
    assert not any(assignment.plan.values())  # no worker of b, and no fresh one
    assert list(assignment.retire) == [slots[0]]  # one task waits: one worker is freed for it

    busy(slots[0], "a", 1, since=0.0)  # a worker of a still busy, the other idle: it goes
    assert list(q.assign(slots).retire) == [slots[1]]

    q, slots = queue(), idle(2)
    job(q, slots, "a")
    slots[0].domain = "a"
    busy(slots[1], "a", 1, since=0.0)
    slots[1].domain = "a"
    dispatch(q, slots, "a", 3)
    assignment = q.assign(slots)
    assert not assignment.retire  # the tasks waiting are its own job's: it keeps its worker
