"""The worker pool state machine with fake processes and a given clock."""

from __future__ import annotations

import itertools

from agents.pool import FIRST_BACKOFF, State, WorkerPool, exit_reason


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


def make(size=2):
    procs = []

    def spawn(index):
        proc = FakeProc()
        procs.append(proc)
        return proc

    return WorkerPool(size, spawn, backoff_max=8.0), procs


def test_converges_on_size_and_becomes_idle_on_ready():
    pool, procs = make(2)
    pool.converge(0.0)
    assert [s.state for s in pool.slots] == [State.STARTING] * 2
    assert not pool.on_ready(0, 99999, b"w0")  # wrong pid: ignored
    assert pool.on_ready(0, procs[0].pid, b"w0") and pool.on_ready(1, procs[1].pid, b"w1")
    assert len(pool.idle()) == 2 and pool.alive() == 2


def test_death_under_a_task_reports_it_and_restarts_at_once():
    pool, procs = make(1)
    pool.converge(0.0)
    pool.on_ready(0, procs[0].pid, b"w0")
    slot = pool.idle()[0]
    pool.assign(slot, "task-1", 0.5)
    procs[0].code = -9
    (ex,) = pool.reap(1.0)
    assert ex.task == "task-1" and "signal 9 (SIGKILL)" in ex.reason
    pool.converge(1.0)
    assert slot.state is State.STARTING and len(procs) == 2


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
