"""The limits a job sets on its tasks (agents/limits.py), on given times and memory readings."""

from __future__ import annotations

from agents.limits import breaches
from agents.local_queue import JobInfo, QueuedTask
from agents.pool import Slot, State
from cluster.contract import payload, wire


class Proc:
    pid = 42


def running(job_id: str, started: float) -> Slot:
    slot = Slot(0, state=State.BUSY, proc=Proc(), running=7, task_started=started)
    slot.tasks = {7: QueuedTask(job_id, 0, 1, b""), 8: QueuedTask(job_id, 1, 1, b"")}
    return slot


def test_a_task_over_its_timeout_is_charged_counted_from_when_its_worker_reached_it():
    jobs = {"j": JobInfo("d", {"timeout": 2}, b"", "j")}
    slot = running("j", started=10.0)
    assert breaches([slot], jobs, 12.0, rss=lambda pid: 0) == []
    ((culprit, seq, status, err),) = breaches([slot], jobs, 12.1, rss=lambda pid: 0)
    assert (culprit, seq, status) == (slot, 7, wire.ERROR)
    assert payload.load_error(err)["type"] == "TaskTimeout"


def test_memory_is_read_only_for_jobs_with_a_limit_and_a_worker_over_it_is_charged():
    reads = []

    def rss(pid: int) -> int:
        reads.append(pid)
        return 300 << 20

    slot = running("j", started=0.0)
    assert breaches([slot], {"j": JobInfo("d", {}, b"", "j")}, 1.0, rss) == [] and reads == []
    assert breaches([slot], {"j": JobInfo("d", {"max_memory": 400 << 20}, b"", "j")}, 1.0, rss) == []
    ((_, seq, status, err),) = breaches([slot], {"j": JobInfo("d", {"max_memory": 200 << 20}, b"", "j")}, 1.0, rss)
    assert (seq, status, reads) == (7, wire.LOST, [42, 42])
    assert "300 MiB > 200 MiB" in payload.load_error(err)["message"]


def test_a_task_of_an_ended_job_is_no_longer_limited():
    assert breaches([running("gone", started=0.0)], {}, 100.0, rss=lambda pid: 1 << 40) == []
