"""The limits a job sets on each of its tasks, which the agent enforces: ``timeout``
(seconds a task may run, counted from when its worker reached it) and ``max_memory``
(bytes its worker may use). Pure but for a worker's memory, which the caller reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from cluster.contract import payload, wire

from .local_queue import JobInfo
from .pool import Slot

Breach = tuple[Slot, int, int, bytes]  # the worker, the seq of its task, the task's status and error


def breaches(busy: Iterable[Slot], jobs: Mapping[str, JobInfo], now: float, rss: Callable[[int], int]) -> list[Breach]:
    """The running tasks over their job's limits; ``rss(pid)`` reads a worker's memory, and
    only for jobs that set a limit."""
    out: list[Breach] = []
    for slot in busy:
        seq = slot.running
        task = slot.tasks.get(seq)
        job = jobs.get(task.job_id) if task is not None else None
        if job is None:
            continue
        timeout = job.options.get("timeout")
        if isinstance(timeout, (int, float)) and 0 < timeout < now - slot.task_started:
            err = payload.failure(
                "TaskTimeout", f"task ran longer than its {timeout:g} s timeout; its worker was killed"
            )
            out.append((slot, seq, wire.ERROR, err))
            continue
        limit = job.options.get("max_memory")
        if isinstance(limit, int) and limit > 0 and slot.proc is not None:
            used = rss(slot.proc.pid)
            if used > limit:
                err = payload.lost_error(
                    f"worker exceeded the task memory limit ({used / 2**20:.0f} MiB > "
                    f"{limit / 2**20:.0f} MiB) and was killed"
                )
                out.append((slot, seq, wire.LOST, err))
    return out
