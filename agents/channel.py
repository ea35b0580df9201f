"""Messages between the agent and one of its workers, over a socketpair.

ZeroMQ carries every hop that may cross the network; this one never does. The
agent makes a connected pair of Unix stream sockets per worker and the worker
inherits one end, so nothing else can reach it. A message costs one system call
and wakes the reader directly, where ZeroMQ hands it through an I/O thread on
each side: three thread wake-ups per message instead of one. ``python -m bench.hop``
compares one round trip both ways on this machine (a socketpair took about half the
time and half the CPU of ZeroMQ over ipc or tcp; docs/benchmarks.md has the figures).

A record is ``<u64 body length><u32 frame count>`` followed by the body: one u64
length per frame, then the frames. The lengths are checked before anything is
allocated: user code in a worker can write to any descriptor it has, and a
corrupt stream must cost that worker, never the agent.
"""

from __future__ import annotations

import collections
import itertools
import socket
import struct
from collections.abc import Iterable
from typing import Any

PREFIX = struct.Struct("<QI")
MAX_FRAMES = 1 << 16
CHUNK = 256 * 1024  # one read; a record larger than this gets a buffer of its own
BIG = 64 * 1024  # frames at least this large are handed on as views, not copied
IOV_MAX = 512


class Closed(ConnectionError):
    """The other end is gone (the worker died, or the agent closed the pair)."""


class Corrupt(ValueError):
    """Bytes that are not a record: the stream cannot be trusted any more."""


def record(frames: Iterable[Any]) -> list[Any]:
    """A message's frames as the buffers of one record, for a gathering write."""
    frames = list(frames)
    lengths = [len(f) for f in frames]
    head = PREFIX.pack(8 * len(frames) + sum(lengths), len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths)
    return [head, *(f for f in frames if len(f))]


def _advance(bufs: collections.deque, sent: int) -> None:
    """Drop ``sent`` bytes from the front of a queue of buffers."""
    while bufs and len(bufs[0]) <= sent:
        sent -= len(bufs.popleft())
    if sent:
        bufs[0] = memoryview(bufs[0]).cast("B")[sent:]


def _write(sock: socket.socket, bufs: collections.deque) -> None:
    """One gathering write of what ``bufs`` holds; what was written leaves it."""
    _advance(bufs, sock.sendmsg(list(itertools.islice(bufs, IOV_MAX))))


def send_blocking(sock: socket.socket, frames: Iterable[Any]) -> None:
    """The worker's send: waits for room (the agent reads whenever it can)."""
    bufs = collections.deque(record(frames))
    while bufs:
        _write(sock, bufs)


class Reader:
    """Records out of a byte stream, read without blocking."""

    def __init__(self, max_frame: int | None = None):
        self.max_frame = max_frame
        self.buf = bytearray()  # received, not yet a whole record
        self.body: bytearray | None = None  # a large record being read into its own buffer
        self.filled = 0
        self.count = 0
        self.corrupt: Corrupt | None = None  # set at the first bad record; nothing is read after it
        self.ended = False  # end of stream seen after records still to hand out

    def read(self, sock: socket.socket) -> list[list[Any]]:
        """Every whole record the socket has now, up to a corrupt one (then ``corrupt``
        says why). Raises Closed at end of stream."""
        out: list[list[Any]] = []
        if self.ended:
            raise Closed("the other end closed the channel")
        while self.corrupt is None:
            try:
                if self.body is not None:
                    n = sock.recv_into(memoryview(self.body)[self.filled :], 0, socket.MSG_DONTWAIT)
                else:
                    chunk = sock.recv(CHUNK, socket.MSG_DONTWAIT)
                    n = len(chunk)
            except BlockingIOError:
                return out
            except ConnectionResetError:
                raise Closed("the other end closed the channel") from None
            if n == 0:
                if out:  # a worker's last results, then its exit: the results first
                    self.ended = True
                    return out
                raise Closed("the other end closed the channel")
            if self.body is not None:
                self.filled += n
                if self.filled == len(self.body):
                    try:
                        out.append(self._frames(memoryview(self.body), self.count, copy=False))
                    except Corrupt as exc:
                        self.corrupt = exc
                    self.body = None
                continue
            self.buf += chunk
            try:
                self._parse(out)
            except Corrupt as exc:
                self.corrupt = exc
            if n < CHUNK or self.corrupt:
                return out  # drained: a further read would only say so; the poller wakes us for more
        return out

    def _parse(self, out: list) -> None:
        while len(self.buf) >= PREFIX.size:
            size, count = PREFIX.unpack_from(self.buf)
            self._check(size, count)
            end = PREFIX.size + size
            if len(self.buf) >= end:
                out.append(self._frames(memoryview(self.buf)[PREFIX.size : end], count, copy=True))
                del self.buf[:end]
                continue
            if size >= CHUNK:  # the rest goes straight into a buffer of its own
                self.body = bytearray(size)
                self.filled = len(self.buf) - PREFIX.size
                memoryview(self.body)[: self.filled] = memoryview(self.buf)[PREFIX.size :]  # no temporary copy
                self.count = count
                self.buf = bytearray()
            return

    def _check(self, size: int, count: int) -> None:
        if count > MAX_FRAMES or size < 8 * count:
            raise Corrupt(f"a record of {count} frames in {size} bytes")
        if self.max_frame is not None and size > 8 * count + count * self.max_frame:
            raise Corrupt(f"a record of {size} bytes in {count} frames is over the limit")

    def _frames(self, body: memoryview, count: int, copy: bool) -> list[Any]:
        lengths = struct.unpack_from(f"<{count}Q", body)
        if sum(lengths) != len(body) - 8 * count:
            raise Corrupt("frame lengths do not add up to the record")
        if self.max_frame is not None and any(n > self.max_frame for n in lengths):
            raise Corrupt("a frame over the limit")
        frames, at = [], 8 * count
        for n in lengths:
            view = body[at : at + n]
            # Small frames are copied out (the buffer is reused); large ones of a record
            # with a buffer of its own are passed on as views of it.
            frames.append(view if not copy and n >= BIG else bytes(view))
            at += n
        return frames


class Channel:
    """The agent's end of a worker's pair: never blocks. What the socket cannot take
    yet waits in ``pending``; the agent polls for room while there is some."""

    def __init__(self, sock: socket.socket, slot: int, max_frame: int | None = None):
        sock.setblocking(False)
        self.sock, self.slot = sock, slot
        self.reader = Reader(max_frame)
        self.pending: collections.deque = collections.deque()
        self.closed = False
        self.polled_for_room = False  # the agent's poller also waits for room to write (see Agent)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frames: Iterable[Any]) -> bool:
        """Queue a message and write what fits now. False once the worker is gone."""
        if self.closed:
            return False
        self.pending.extend(record(frames))
        self.flush()
        return not self.closed

    def flush(self) -> None:
        while self.pending and not self.closed:
            try:
                _write(self.sock, self.pending)
            except BlockingIOError:
                return
            except OSError:  # EPIPE, ECONNRESET: the worker died; reaping deals with its tasks
                self.closed = True
                self.pending.clear()
                return

    def receive(self) -> list[list[Any]]:
        try:
            return self.reader.read(self.sock)
        except Closed:
            self.closed = True
            raise

    def close(self) -> None:
        self.closed = True
        self.pending.clear()
        self.sock.close()


def pair() -> tuple[socket.socket, socket.socket]:
    """(agent end, worker end); the worker end goes to the worker through pass_fds."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
