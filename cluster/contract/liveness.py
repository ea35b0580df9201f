"""Heartbeat liveness: a peer silent for ``interval * misses`` seconds is dead.

Pure: every method takes ``now`` (from ``time.monotonic()``), so it is tested
without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Hashable


class Liveness:
    def __init__(self, interval: float, misses: int):
        self.misses = misses
        self.deadline = interval * misses
        self._last: dict[Hashable, float] = {}

    def set_interval(self, interval: float) -> None:
        self.deadline = interval * self.misses

    def beat(self, peer: Hashable, now: float) -> None:
        self._last[peer] = now

    def forget(self, peer: Hashable) -> None:
        self._last.pop(peer, None)

    def age(self, peer: Hashable, now: float) -> float | None:
        last = self._last.get(peer)
        return None if last is None else now - last

    def expired(self, now: float) -> list[Hashable]:
        """Peers past their deadline; they are forgotten as they are reported."""
        dead = [p for p, last in self._last.items() if now - last > self.deadline]
        for peer in dead:
            del self._last[peer]
        return dead

    def __contains__(self, peer: Hashable) -> bool:
        return peer in self._last


class BeatInterval:
    """How often a coordinator and its agents beat: the configured interval, stretched
    so that heartbeats stay within ``budget`` messages a second each way however large
    the fleet (0: never stretched). At 0.5 s and 4,000 a second, up to 2,000 agents
    beat every 0.5 s and 5,000 every 1.25 s: a silent agent is then found in 5 s
    rather than 2, and the coordinator's loop is not half heartbeats.

    The interval moves in steps of ``STEP`` and shrinks only once the fleet is 10%
    below a step, so a fleet at a step's edge does not flap. Agents learn it from the
    coordinator's next message, so a longer one is safe at once; a shorter one is held
    against agents only one old deadline later, as some still beat at the old pace
    until then. Pure, like Liveness."""

    STEP = 0.25
    HYSTERESIS = 1.1

    def __init__(self, minimum: float, budget: float, misses: int):
        self.minimum, self.budget, self.misses = minimum, budget, misses
        self.interval = minimum
        self._old = minimum  # a longer interval agents may still beat at, until _old_until
        self._old_until = 0.0

    def wanted(self, agents: float) -> float:
        if not self.budget:
            return self.minimum
        return max(self.minimum, math.ceil(agents / self.budget / self.STEP) * self.STEP)

    def update(self, agents: int, now: float) -> bool:
        """Follow the fleet's size; True when the interval changed."""
        want = self.wanted(agents)
        if want < self.interval:
            want = max(want, self.wanted(agents * self.HYSTERESIS))
        if want == self.interval:
            return False
        if want < self.interval:
            self._old = max(self.interval, self._old if now < self._old_until else 0.0)
            self._old_until = now + self._old * self.misses
        self.interval = want
        return True

    def deadline(self, now: float) -> float:
        """How long an agent may be silent before it is lost."""
        slowest = max(self.interval, self._old) if now < self._old_until else self.interval
        return slowest * self.misses
