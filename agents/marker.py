"""Which task a worker is running, in 8 bytes of memory shared with its agent.

The agent hands a worker several short tasks at once. When the worker dies, or
is killed for a timeout, a memory limit or a cancellation, the agent must know
which of them was running: that one is charged (lost, timed out, over its
memory) and the others run again free. Messages cannot say it, because a
finished task's result can die unsent in the worker's buffers. So the worker
writes the task's sequence number here before calling the function and 0
after; the agent reads it when it needs to know.

The memory is a memfd the worker inherits (``fd:N`` on its command line): no
file to leave behind when the agent is killed, nothing another process can open.
A path still works, for a worker started by an agent of the previous release.
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
    def __init__(self, fd: int, *, keep_fd: bool):
        self._map = mmap.mmap(fd, _SEQ.size)
        self.fd = fd if keep_fd else -1
        if not keep_fd:
            os.close(fd)

    @classmethod
    def create(cls) -> Marker:
        """The agent's side: new shared memory, its fd kept to hand to each worker."""
        fd = os.memfd_create("clusterd-running", os.MFD_CLOEXEC)
        os.ftruncate(fd, _SEQ.size)
        return cls(fd, keep_fd=True)

    @classmethod
    def attach(cls, where: str) -> Marker:
        """The worker's side: ``fd:N`` inherited from the agent, or a file's path."""
        if where.startswith("fd:"):
            return cls(int(where[3:]), keep_fd=False)
        return cls(os.open(where, os.O_RDWR), keep_fd=False)

    def set(self, seq: int) -> None:
        _SEQ.pack_into(self._map, 0, seq)

    def get(self) -> int:
        return _SEQ.unpack_from(self._map, 0)[0]

    def close(self) -> None:
        self._map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NoMarker:
    """For a worker started by an agent that passes no marker file (release 0.1.0)."""

    def set(self, seq: int) -> None:
        pass
