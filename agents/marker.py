"""Which task a worker is running, in 8 bytes of memory shared with its agent.

The agent hands a worker several short tasks at once. When the worker dies, or
is killed for a timeout, a memory limit or a cancellation, the agent must know
which of them was running: that one is charged (lost, timed out, over its
memory) and the others run again free. Messages cannot say it, because a
finished task's result can die unsent in the worker's buffers. So the worker
writes the task's sequence number here before calling the function and 0
after; the agent reads it when it needs to know.
"""

from __future__ import annotations

import mmap
import os
import struct

# Native layout at offset 0: CPython stores it with one memcpy of an aligned
# 8-byte word, so a reader never sees half of an old number and half of a new
# one; a value that matches no outstanding task is ignored anyway.
_SEQ = struct.Struct("@Q")
IDLE = 0


class Marker:
    def __init__(self, path: str, *, create: bool = False):
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, _SEQ.size)
            self._map = mmap.mmap(fd, _SEQ.size)
        finally:
            os.close(fd)

    def set(self, seq: int) -> None:
        _SEQ.pack_into(self._map, 0, seq)

    def get(self) -> int:
        return _SEQ.unpack_from(self._map, 0)[0]

    def close(self) -> None:
        self._map.close()


class NoMarker:
    """For a worker started by an agent that passes no marker file (release 0.1.0)."""

    def set(self, seq: int) -> None:
        pass
