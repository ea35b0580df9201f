"""Events per second over a sliding window, from samples of a growing counter.

Pure: the caller samples ``(now, count)`` on its timer and asks for the rate,
so memory is one entry per sample in the window, whatever the event rate.
"""

from __future__ import annotations

import collections


class Throughput:
    def __init__(self, window: float):
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def sample(self, now: float, count: int) -> None:
        self._samples.append((now, count))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()  # keep one sample at or beyond the window's start

    def rate(self, now: float, count: int) -> float:
        """Events per second since the oldest sample in the window (0 with no history)."""
        if not self._samples:
            return 0.0
        start, start_count = self._samples[0]
        elapsed = now - start
        return (count - start_count) / elapsed if elapsed > 0 else 0.0
