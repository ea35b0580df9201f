"""The worker pool state machine with fake processes and a given clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

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


def three_tasks_held():
    """One worker with a marker, holding three tasks as seqs 11, 12 and 13."""
    marker = FakeMarker()
    pool, procs = make(1, [marker])
    slot = ready_slot(pool, procs)
    tasks = [Task(("j", i, 1)) for i in range(3)]
    for seq, task in zip((11, 12, 13), tasks):
        pool.assign(slot, seq, task, 0.0)
    return marker, pool, procs, slot, tasks


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
    marker, pool, procs, slot, tasks = three_tasks_held()
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


def test_a_retired_worker_is_replaced_at_once_by_a_clean_one():
    """A worker whose job ended, or whose slot another job wants, is killed and restarted
    without backoff and without counting as a crash; the new process serves no job yet."""
    pool, procs = make(1)
    slot = ready_slot(pool, procs)
    slot.domain = "job-a"
    pool.retire(slot)
    assert procs[0].code == -9 and not pool.live()  # killed, and no longer given tasks
    (ex,) = pool.reap(1.0)
    assert ex.task is None and slot.restarts == 0 and slot.retirements == 1
    pool.converge(1.0)  # at once: no backoff
    assert len(procs) == 2 and slot.state is State.STARTING and slot.domain is None and not slot.retired


def test_started_reports_the_task_a_worker_runs_once_and_only_from_its_marker():
    marker, pool, procs, slot, tasks = three_tasks_held()
    assert pool.started() == [] and pool.awaiting_start()  # held, not started yet
    marker.value = 11
    assert pool.started() == [tasks[0]]
    assert pool.started() == []  # told once
    marker.value = 13  # the second started and ended between two looks: its result tells
    assert pool.started() == [tasks[2]]
    assert not pool.awaiting_start()
    marker.value = 0
    assert pool.started() == []  # between tasks


def test_without_a_marker_nothing_is_reported_started():
    pool, procs = make(1)
    slot = ready_slot(pool, procs)
    pool.assign(slot, 1, Task(("j", 0, 1)), 0.0)
    assert pool.started() == [] and not pool.awaiting_start()


def test_starts_are_looked_for_soon_after_news_then_less_and_less_often():
    from agents.starts import FIRST, LAST, StartWatch

    marker, pool, procs, slot, tasks = three_tasks_held()
    watch = StartWatch(pool)
    assert watch.look(0.0, news=True) == [] and watch.next == FIRST  # tasks taken: look soon
    marker.value = 11
    assert watch.look(FIRST, news=False) == [tasks[0]]
    now, gaps = FIRST, []
    while watch.next - now < LAST:  # the first runs long, the others wait behind it
        gaps.append(watch.next - now)
        now = watch.next
        assert watch.look(now, news=False) == []
    assert gaps == [FIRST, 2 * FIRST, 4 * FIRST, 8 * FIRST, 16 * FIRST]
    marker.value = 12  # its result came, and the next started
    assert watch.look(now + 0.001, news=True) == []  # soon, not at once
    assert watch.look(now + 0.001 + FIRST, news=False) == [tasks[1]]
    marker.value = 13
    assert watch.look(now + 1.0, news=False) == [tasks[2]]
    assert watch.next == float("inf")  # nothing held is unreported: no more wake-ups
    assert watch.look(now + 2.0, news=False) == []
