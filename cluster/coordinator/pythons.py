"""Which Python the connected agents run, and which Python the open jobs' code needs.

A job whose code was serialized by value (bytecode: the Executor's) loads only on the
Python minor version that wrote it (``options["python"]``); code sent as a reference or
as source loads anywhere. An agent that does not say (a release before agents published
it) counts as able to run anything. While every connected agent runs the Python of every
pinned job, the fleet is not ``mixed`` and planning checks nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Protocol


def minor(version: str) -> str:
    """``"3.11.7"`` -> ``"3.11"``: bytecode loads on the Python minor version that wrote it."""
    return ".".join(version.split(".")[:2])


class Pinned(Protocol):
    python: str  # the minor version its code needs; "" for code that runs anywhere

    @property
    def queue(self) -> collections.deque[int]: ...


class Pythons:
    def __init__(self) -> None:
        self.agents: collections.Counter[str] = collections.Counter()  # connected agents by minor version
        self.jobs: collections.Counter[str] = collections.Counter()  # pinned jobs by the minor version they need
        self.mixed = False  # some connected agent cannot run some pinned job: planning must look

    def agent(self, python: str, change: int) -> None:
        self._count(self.agents, python, change)

    def job(self, python: str, change: int) -> None:
        if python:
            self._count(self.jobs, python, change)

    def runs(self, python: str) -> bool:
        """Whether a connected agent can run code serialized by that minor version."""
        return python in self.agents or "" in self.agents

    def runnable(self, jobs: Iterable[Pinned]) -> dict[str, int]:
        """For each minor version of the connected agents, the queued tasks its agents may
        run: an upper bound, as a queue still lists tasks finished or cancelled meanwhile."""
        anywhere = 0
        pinned: collections.Counter[str] = collections.Counter()
        for job in jobs:
            if job.python:
                pinned[job.python] += len(job.queue)
            else:
                anywhere += len(job.queue)
        return {python: anywhere + pinned[python] for python in self.agents if python}

    def _count(self, counter: collections.Counter[str], python: str, change: int) -> None:
        counter[python] += change
        if not counter[python]:
            del counter[python]
        known = self.agents.keys() - {""}  # an agent that does not say runs everything
        self.mixed = bool(self.jobs and known) and (len(known) > 1 or known != self.jobs.keys())
