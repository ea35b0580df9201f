"""A worker process: runs its agent's tasks one at a time, in the order given.

Started by the agent as ``python -m agents.worker ENDPOINT SLOT PARENT_PID MARKER``.
It is the only place besides the client that deserializes user payloads. It
exits by itself when its agent is gone, even after a SIGKILL of the agent:
the kernel sends it SIGKILL (PR_SET_PDEATHSIG), and a ppid check covers the
window before that is armed and kernels without it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Callable

import zmq

from cluster import lifeline, payload, wire

from .marker import IDLE, Marker, NoMarker

FUNCTION_CACHE = 64
PARENT_CHECK_MS = 500
# Results of tasks that follow each other closely go back together, held at most this
# long or this many; a worker that runs out of tasks sends what it has at once.
HOLD = 0.002
MAX_HELD = 64


@dataclasses.dataclass
class Item:
    """One task as the worker runs it, whichever message it came in."""

    job_id: str
    index: int
    attempt: int
    seq: int
    digest: str
    options: dict
    function: bytes  # b"" when the worker should have it cached
    args: bytes
    legacy: bool = False  # came as a RunTask: answered alone, with a TaskDone


def items_of(msg: wire.Message) -> list[Item]:
    if isinstance(msg, wire.RunTasks):
        fn, *args = msg.frames
        return [Item(msg.job_id, index, attempt, seq, msg.digest, msg.options, fn, a)
                for (index, attempt, seq), a in zip(msg.tasks, args)]
    if isinstance(msg, wire.RunTask):
        return [Item(msg.job_id, msg.index, msg.attempt, 0, msg.digest, msg.options, *msg.frames, legacy=True)]
    return []


def run_task(functions: collections.OrderedDict, item: Item) -> tuple[int, bytes]:
    fmt = item.options.get("result_format", payload.RESULT_PICKLE)
    try:
        fn = _function(functions, item.digest, item.function)
        if fn is None:
            return wire.NEED_FUNCTION, b""
        args, kwargs = payload.load_args(item.args)
        value = fn(*args, **kwargs)
        body = payload.pack_result(value, fmt)
        limit = item.options.get("max_payload", wire.MAX_PAYLOAD_DEFAULT)
        if isinstance(limit, int) and len(body) > limit:
            return wire.ERROR, payload.failure(
                "ResultTooLarge", f"the result is {len(body) / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB")
        return wire.OK, body
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from user code are task errors too
        return wire.ERROR, payload.pack_error(exc, fmt)


def _function(functions: collections.OrderedDict, digest: str, blob: bytes) -> Callable | None:
    fn = functions.get(digest)
    if fn is not None:
        functions.move_to_end(digest)
        return fn
    if not blob:
        return None
    fn = payload.load_function(blob)
    functions[digest] = fn
    if len(functions) > FUNCTION_CACHE:
        functions.popitem(last=False)
    return fn


class Results:
    """Finished tasks on their way back: one message for all that finished close together.

    A task that runs much longer than the ones before it must not hold their results
    back, so while results are held, a flusher thread looks every ``HOLD`` and sends
    them if a task has been running meanwhile. One thread at a time uses the socket:
    the flusher only while a task runs, under ``lock``, which the main thread takes
    when the task returns. Nothing signals the flusher per task or per batch (a thread
    wake-up costs more than a short task): it sleeps on ``held`` only when nothing is."""

    def __init__(self, sock: zmq.Socket, marker: Marker | NoMarker):
        self.sock = sock
        self.marker = marker
        self.items: list[list] = []
        self.bodies: list[bytes] = []
        self.since = 0.0
        self.lock = threading.Lock()
        self.running = False
        self.held = threading.Event()
        threading.Thread(target=self._flusher, name="results-flusher", daemon=True).start()

    def add(self, item: Item, status: int, body: bytes) -> None:
        if item.legacy:
            self.sock.send_multipart(wire.TaskDone(item.job_id, item.index, item.attempt, status,
                                                   frames=(body,)).encode())
            return
        first = not self.items
        if first:
            self.since = time.monotonic()
        self.items.append([item.job_id, item.index, item.attempt, status])
        self.bodies.append(body)
        if first:
            self.held.set()  # after the append: the flusher clears, then looks at items again

    def due(self, more_to_run: bool) -> bool:
        return bool(self.items) and (not more_to_run or len(self.items) >= MAX_HELD
                                     or time.monotonic() - self.since >= HOLD)

    def send(self) -> None:
        self.sock.send_multipart(wire.TasksDone(self.items, frames=tuple(self.bodies)).encode(), copy=False)
        self.items, self.bodies = [], []

    @contextlib.contextmanager
    def task(self, seq: int):
        """While a task runs: the agent sees its seq in the marker, the flusher may send."""
        self.marker.set(seq)
        with self.lock:
            self.running = True
        try:
            yield
        finally:
            with self.lock:
                self.running = False
            self.marker.set(IDLE)

    def _flusher(self) -> None:
        while True:
            self.held.wait()
            time.sleep(HOLD)
            with self.lock:
                if self.running and self.items and time.monotonic() - self.since >= HOLD:
                    self.send()
                if not self.items:
                    self.held.clear()
                    if self.items:  # added between the check and the clear
                        self.held.set()


def receive(sock: zmq.Socket, inbox: collections.deque) -> collections.deque:
    """Take every message already waiting, without blocking; returns the new inbox."""
    while True:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return inbox
        try:
            msg = wire.decode(frames)
        except wire.ProtocolError:
            continue  # only our agent talks to us; a bad frame is dropped, not fatal
        if isinstance(msg, wire.SkipTasks):
            skip = set(msg.seqs)
            inbox = collections.deque(item for item in inbox if item.seq not in skip)
        else:
            inbox.extend(items_of(msg))


def main(argv: list[str]) -> int:
    endpoint, slot, parent_pid = argv[0], int(argv[1]), int(argv[2])
    lifeline.die_with(parent_pid, signal.SIGKILL)
    # Ctrl-C in a terminal signals the whole process group; the agent decides
    # when its workers stop, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, -1)  # only its own agent talks to it, over a private ipc socket
    sock.setsockopt(zmq.ROUTING_ID, f"{slot}:{os.getpid()}".encode())
    sock.connect(endpoint)
    sock.send_multipart(wire.WorkerReady(slot, os.getpid()).encode())
    functions: collections.OrderedDict = collections.OrderedDict()
    inbox: collections.deque[Item] = collections.deque()
    results = Results(sock, Marker(argv[3]) if len(argv) > 3 else NoMarker())
    while True:
        inbox = receive(sock, inbox)
        if results.due(more_to_run=bool(inbox)):
            results.send()
        if not inbox:
            if not sock.poll(PARENT_CHECK_MS) and os.getppid() != parent_pid:
                return 0
            continue
        item = inbox.popleft()
        with results.task(item.seq):
            status, body = run_task(functions, item)
        results.add(item, status, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
