"""A worker's file descriptors 1 and 2, captured per task.

The descriptors themselves point at pipes, so what a task's subprocesses and C
extensions write is captured as well as its ``print``. A reader thread drains both
pipes all the time, so no writer ever blocks on a full pipe for long; of each stream it
keeps the first ``KEEP`` bytes of a task and counts the rest, which a marker line
names at the end. While the task runs, whole lines go out live (``live``), once
``CHUNK`` bytes wait or the oldest line has waited ``LIVE_DELAY``; a line is cut only
when it alone exceeds ``CHUNK``. When the task returns, ``end`` flushes Python's
buffers, reads what the pipes still hold and returns the rest, to be sent before the
task's result. What is written between tasks (by a thread or a subprocess a task left
behind) is read by the reader thread and dropped, except what it has not read yet when
the next task starts (written in the instant before), and what Python buffered for
sys.stdout or sys.stderr and flushes only at the end of the next task: those join it.

The worker's own diagnostics still reach the agent's journal: ``diagnostics`` is a
stream on a copy of the original descriptor 2, and ``close`` puts both descriptors
back.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable

from cluster.contract import wire

KEEP = 64 * 1024  # bytes of each stream kept per task: the head
CHUNK = 4 * 1024  # the most bytes of one stream in one live message
LIVE_DELAY = 0.1  # seconds a whole line waits at most before it goes out live
READ = 256 * 1024
PIPE_SIZE = 1 << 20  # room for a burst while the reader thread waits for the GIL
DRAIN_READS = 64  # at a task's end: what the pipes hold, not what a leftover writer keeps adding

Key = tuple[str, int, int]  # (job id, index, attempt)


def marker(dropped: int) -> bytes:
    return f"[clusterd: {dropped} more bytes not kept]\n".encode()


class Stream:
    """One stream of the task running: the bytes kept and not sent yet, and the count of
    those dropped. Pure: the caller reads the pipes and says when."""

    __slots__ = ("name", "kept", "dropped", "pending", "since", "ends_line")

    def __init__(self, name: str) -> None:
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.kept = 0
        self.dropped = 0
        self.pending = bytearray()
        self.since: float | None = None  # when the oldest whole line not sent arrived
        self.ends_line = True  # the last byte kept is a newline (or none was)

    def take(self, data: bytes, now: float) -> None:
        room = KEEP - self.kept
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        if not data:
            return
        if self.since is None and b"\n" in data:
            self.since = now
        self.pending += data
        self.kept += len(data)
        self.ends_line = data.endswith(b"\n")

    def due(self) -> float | None:
        """When whole lines waiting must go live, or None while none wait."""
        if len(self.pending) >= CHUNK:
            return 0.0
        return None if self.since is None else self.since + LIVE_DELAY

    def live(self, now: float) -> list[bytes]:
        """The chunks due to go while the task runs (not removed: see ``consume``)."""
        due = self.due()
        if due is None or now < due:
            return []
        return _chunks(self.pending, whole_lines=True)

    def consume(self, chunks: list[bytes]) -> None:
        del self.pending[: sum(map(len, chunks))]
        self.since = None  # what is left is part of a line

    def final(self) -> list[bytes]:
        """Everything not sent, and the marker when bytes were dropped."""
        out = _chunks(self.pending, whole_lines=False)
        if self.dropped:
            out.append((b"" if self.ends_line else b"\n") + marker(self.dropped))
        return out


def _chunks(data: bytearray, *, whole_lines: bool) -> list[bytes]:
    """``data`` in pieces of at most CHUNK bytes, each ending at a line's end unless a
    line alone is longer; with ``whole_lines``, a last partial line stays out."""
    out: list[bytes] = []
    start, size = 0, len(data)
    while start < size:
        if size - start < CHUNK:
            end = data.rfind(b"\n", start) + 1 if whole_lines else size
            if end > start:
                out.append(bytes(data[start:end]))
            break
        end = data.rfind(b"\n", start, start + CHUNK) + 1
        if end <= start:
            end = start + CHUNK  # one line longer than a chunk
        out.append(bytes(data[start:end]))
        start = end
    return out


def _flush() -> None:
    """What Python buffered for fds 1 and 2 goes into the pipes."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a task may have closed or replaced them
            pass


Send = Callable[[list[wire.TaskOutput]], bool]  # sends all or none; False: none, keep them


class Capture:
    """Redirects fds 1 and 2 to pipes for the life of the worker (``close`` undoes it).
    ``live`` is called on the reader thread with messages due while a task runs."""

    def __init__(self, live: Send) -> None:
        self._live = live
        self.lock = threading.Lock()  # the streams and key: the reader thread's and end()'s
        self.key: Key | None = None
        self._saved = {fd: os.dup(fd) for fd in (1, 2)}  # os.dup: not inherited by the task's subprocesses
        self.diagnostics = open(os.dup(self._saved[2]), "w", buffering=1, closefd=True)  # noqa: SIM115
        self.streams: dict[int, Stream] = {}
        _flush()
        self._poller = select.poll()  # the reader thread's; a poll object serves one thread at a time
        self._drainer = select.poll()  # end()'s
        for fd, name in ((1, "out"), (2, "err")):
            r, w = os.pipe()
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            os.set_blocking(r, False)
            os.dup2(w, fd)  # inheritable: what the task starts writes here too
            os.close(w)
            self.streams[r] = Stream(name)
            self._poller.register(r, select.POLLIN)
            self._drainer.register(r, select.POLLIN)
        self._closed = False
        self._thread = threading.Thread(target=self._reader, name="output-capture", daemon=True)
        self._thread.start()

    def log_to_diagnostics(self, *names: str) -> None:
        """The worker's own loggers write to the journal, not into a task's output."""
        handler = logging.StreamHandler(self.diagnostics)
        handler.setFormatter(logging.Formatter("worker %(process)d: %(levelname)s %(name)s: %(message)s"))
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.propagate = False

    # ------------------------------------------------------------ main thread

    def begin(self, key: Key) -> None:
        """A task starts. The pipes were emptied when the last one ended; what was written
        since, between tasks, and the reader thread has not read yet goes with this one
        (reading the pipes here too would cost every task a system call)."""
        with self.lock:
            self.key = key

    def end(self) -> list[wire.TaskOutput]:
        """The task returned: what it wrote and was not sent yet, to go before its result."""
        _flush()
        with self.lock:
            key, self.key = self.key, None
            if key is None:
                return []
            self._drain(key, time.monotonic())
            if not any(s.kept or s.dropped for s in self.streams.values()):
                return []  # the usual task writes nothing: nothing to build or reset
            out = [wire.TaskOutput(*key, s.name, frames=(chunk,)) for s in self.streams.values() for chunk in s.final()]
            for s in self.streams.values():
                s.reset()
        return out

    def close(self) -> None:
        """Put fds 1 and 2 back as they were (the reader thread, a daemon, stays blocked)."""
        if self._closed:
            return
        self._closed = True
        _flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)

    def _drain(self, key: Key | None, now: float) -> None:
        """Read what the pipes hold (under ``lock``), not what a leftover writer keeps adding."""
        for _ in range(DRAIN_READS):
            ready = self._drainer.poll(0)
            if not ready:
                return
            for fd, _event in ready:
                self._read(fd, key, now)

    # ----------------------------------------------------------- reader thread

    def _reader(self) -> None:
        while True:
            with self.lock:
                dues = [d for s in self.streams.values() if (d := s.due()) is not None] if self.key else []
            timeout = -1 if not dues else max(0, int((min(dues) - time.monotonic()) * 1000) + 1)
            ready = self._poller.poll(timeout)
            with self.lock:
                now = time.monotonic()
                for fd, _event in ready:
                    self._read(fd, self.key, now)
                if self.key is not None:
                    self._send_live(self.key, now)

    def _read(self, fd: int, key: Key | None, now: float) -> None:
        try:
            data = os.read(fd, READ)
        except BlockingIOError:
            return
        if not data:  # never: we hold the write ends; but a closed pipe must not spin us
            for poller in (self._poller, self._drainer):
                with contextlib.suppress(KeyError):
                    poller.unregister(fd)
            return
        if key is not None:
            self.streams[fd].take(data, now)

    def _send_live(self, key: Key, now: float) -> None:
        due = [(s, s.live(now)) for s in self.streams.values()]
        msgs = [wire.TaskOutput(*key, s.name, frames=(chunk,)) for s, chunks in due for chunk in chunks]
        if msgs and self._live(msgs):
            for s, chunks in due:
                if chunks:
                    s.consume(chunks)
