"""Heartbeat liveness: a peer silent for ``interval * misses`` seconds is dead.

Pure: every method takes ``now`` (from ``time.monotonic()``), so it is tested
without sleeping.
"""

from __future__ import annotations

from typing import Hashable


class Liveness:
    def __init__(self, interval: float, misses: int):
        self.deadline = interval * misses
        self._last: dict[Hashable, float] = {}

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
