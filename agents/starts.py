"""When the agent looks for tasks that workers started, so that their clients see them
RUNNING (``Future.running()``, ``clusterctl submit``'s bar, ``cancel()`` refused).

A worker writes the task it runs in its running marker (marker.py); looking costs one
8-byte read per worker, and what it finds goes with the agent's next results. Looking at
every start would cost a wake-up per task; instead the agent looks FIRST after a worker
took tasks or answered (its next task starts then), and, while some held task's start is
still unreported, at intervals that double up to LAST: a task that loads slowly before it
starts is seen within LAST, and an agent whose workers run long tasks with others queued
behind them wakes ten times a second for it, not two hundred. A task that starts and ends
between two looks is never reported: its result says all.
"""

from __future__ import annotations

import math
from typing import Any, Final

from .pool import WorkerPool

FIRST: Final = 0.005
LAST: Final = 0.1


class StartWatch:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.next = math.inf  # when to look next; never while no held task's start is unreported
        self.every = FIRST

    def look(self, now: float, news: bool) -> list[Any]:
        """The tasks seen started since the last look, when a look is due; else [].
        ``news``: a worker took tasks or sent something since the last call."""
        if news or self.next == math.inf:
            if self.next > now + FIRST and (news or self.pool.awaiting_start()):
                self.next, self.every = now + FIRST, FIRST
        if now < self.next:
            return []
        found = self.pool.started()
        if not self.pool.awaiting_start():
            self.next = math.inf
        else:
            self.every = FIRST if found else min(2 * self.every, LAST)
            self.next = now + self.every
        return found
