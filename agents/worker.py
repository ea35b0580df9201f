"""A worker process: runs its agent's tasks one at a time, in the order given.

Started by the agent as ``python -m agents.worker fd:N SLOT PARENT_PID fd:M``, N
being its end of a socketpair (channel.py) and M its running marker (marker.py);
an ipc:// endpoint in place of fd:N and a file in place of fd:M are how agents of
older releases started it, and still work. It is the only
place besides the client that deserializes user payloads. It
exits by itself when its agent is gone, even after a SIGKILL of the agent:
the kernel sends it SIGKILL (PR_SET_PDEATHSIG), and a ppid check covers the
window before that is armed and kernels without it. What a task writes to its
stdout and stderr goes to its client (capture.py), not to the agent's journal.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from cluster.contract import payload, wire
from cluster.runtime import lifeline, malloc

from . import channel
from .capture import Capture
from .marker import IDLE, Marker, NoMarker

FUNCTION_CACHE = 64
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the bytecode this interpreter loads
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
    function: wire.Buffer  # b"" when the worker should have it cached
    args: wire.Buffer
    legacy: bool = False  # came as a RunTask: answered alone, with a TaskDone


def items_of(msg: wire.Message) -> list[Item]:
    if isinstance(msg, wire.RunTasks):
        fn, *args = msg.frames
        return [
            Item(msg.job_id, index, attempt, seq, msg.digest, msg.options, fn, a)
            for (index, attempt, seq), a in zip(msg.tasks, args)
        ]
    if isinstance(msg, wire.RunTask):
        blob, arguments = msg.frames
        return [Item(msg.job_id, msg.index, msg.attempt, 0, msg.digest, msg.options, blob, arguments, legacy=True)]
    return []


def run_task(functions: collections.OrderedDict, item: Item) -> tuple[int, wire.Buffer]:
    fmt = item.options.get("result_format", payload.RESULT_PICKLE)
    try:
        fn = _function(functions, item)
    except BaseException as exc:  # whatever importing the module raised: the node's, not the task's
        return wire.LOAD_FAILED if item.options.get(wire.LOAD_FAILURES) else wire.ERROR, payload.pack_error(exc, fmt)
    if fn is None:
        return wire.NEED_FUNCTION, b""
    try:
        args, kwargs = payload.load_args(item.args)
        value = fn(*args, **kwargs)
        body = payload.pack_result(value, fmt)
        limit = item.options.get("max_payload", wire.MAX_PAYLOAD_DEFAULT)
        if isinstance(limit, int) and len(body) > limit:
            return wire.ERROR, payload.failure(
                "ResultTooLarge", f"the result is {len(body) / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB"
            )
        return wire.OK, body
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from user code are task errors too
        return wire.ERROR, payload.pack_error(exc, fmt)


def _check_python(python: object) -> None:
    """Code serialized by value is bytecode: another minor version of Python would run it wrongly
    or crash on it. The coordinator sends it only to agents on its client's Python; this guards
    against one that does not know (of an older release)."""
    if isinstance(python, str) and python and python != PYTHON:
        raise RuntimeError(
            f"this function was serialized by value by Python {python}; this worker runs Python "
            f"{sys.version.split()[0]}, which cannot load its bytecode: run it on agents with Python {python}"
        )


def _function(functions: collections.OrderedDict, item: Item) -> Callable | None:
    """The task's function: cached, or loaded from the blob that came with it; None when
    neither. The only place a worker loads code: what fails here fails for the whole job."""
    fn = functions.get(item.digest)
    if fn is not None:
        functions.move_to_end(item.digest)
        return fn
    blob = item.function
    if not blob:
        return None
    if blob[:1] == b"P":
        _check_python(item.options.get("python"))
    fn = payload.load_function(blob)
    functions[item.digest] = fn
    if len(functions) > FUNCTION_CACHE:
        functions.popitem(last=False)
    return fn


class Results:
    """Finished tasks on their way back: one message for all that finished close together.

    A task that runs much longer than the ones before it must not hold their results
    back, so while results are held, a flusher thread looks every ``HOLD`` and sends
    them if a task has been running meanwhile. One thread at a time uses the socket:
    the flusher only while a task runs, under ``lock``, which the main thread takes
    when the task returns. Nothing signals the flusher per task (a thread wake-up
    costs more than a short task), nor when results go back at once, as each one does
    when tasks come one at a time: ``hold`` wakes it only when a batch starts to wait,
    and it sleeps on ``held`` again once nothing is."""

    def __init__(self, link: PairLink | ZmqLink, marker: Marker | NoMarker):
        self.link = link
        self.marker = marker
        self.items: list[list] = []
        self.bodies: list[wire.Buffer] = []
        self.since = 0.0
        self.lock = threading.Lock()
        self.running = False
        self.held = threading.Event()
        threading.Thread(target=self._flusher, name="results-flusher", daemon=True).start()

    def add(self, item: Item, status: int, body: wire.Buffer) -> None:
        if item.legacy:
            self.link.send(wire.TaskDone(item.job_id, item.index, item.attempt, status, frames=(body,)).encode())
            return
        if not self.items:
            self.since = time.monotonic()
        self.items.append([item.job_id, item.index, item.attempt, status])
        self.bodies.append(body)

    def due(self, more_to_run: bool) -> bool:
        return bool(self.items) and (
            not more_to_run or len(self.items) >= MAX_HELD or time.monotonic() - self.since >= HOLD
        )

    def hold(self) -> None:
        """Results stay for the next task's: have the flusher watch them. After they were
        added: the flusher clears ``held``, then looks at items again."""
        if not self.held.is_set():
            self.held.set()

    def live(self, messages: list[wire.TaskOutput]) -> bool:
        """Send a running task's output (agents/capture.py's reader thread); False, sending
        nothing, once the task has returned: then the main thread sends it."""
        with self.lock:
            if not self.running:
                return False
            for msg in messages:
                self.link.send(msg.encode())
            return True

    def send(self) -> None:
        self.link.send(wire.TasksDone(self.items, frames=tuple(self.bodies)).encode())
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


class PairLink:
    """The worker's end of its socketpair with the agent."""

    def __init__(self, fd: int):
        os.set_inheritable(fd, False)  # a process the task starts must not hold the agent's channel open
        self.sock = socket.socket(fileno=fd)
        self.reader = channel.Reader()  # only our agent writes here: no limit to enforce
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def receive(self) -> list[list[Any]]:
        records = self.reader.read(self.sock)  # Closed when the agent is gone: the worker exits
        if self.reader.corrupt is not None:
            raise self.reader.corrupt  # the agent never writes one; better dead than out of step
        return records

    def wait(self, ms: int) -> bool:
        return bool(self.poller.poll(ms))

    def send(self, frames: list) -> None:
        channel.send_blocking(self.sock, frames)


class ZmqLink:
    """A DEALER to an older agent's ipc ROUTER (it spawned us with an endpoint)."""

    def __init__(self, endpoint: str, slot: int):
        self.sock = zmq.Context().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, -1)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{slot}:{os.getpid()}".encode())
        self.sock.connect(endpoint)

    def receive(self) -> list[list[Any]]:
        out = []
        while True:
            try:
                out.append(self.sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                return out

    def wait(self, ms: int) -> bool:
        return bool(self.sock.poll(ms))

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames, copy=False)


def receive(link: PairLink | ZmqLink, inbox: collections.deque) -> collections.deque:
    """Take every message already waiting, without blocking; returns the new inbox."""
    for frames in link.receive():
        try:
            msg = wire.decode(frames)
        except wire.ProtocolError:
            continue  # only our agent talks to us; a bad frame is dropped, not fatal
        if isinstance(msg, wire.SkipTasks):
            skip = set(msg.seqs)
            inbox = collections.deque(item for item in inbox if item.seq not in skip)
        else:
            inbox.extend(items_of(msg))
    return inbox


def main(argv: list[str]) -> int:
    """A worker exec'd by its agent (agents of earlier releases did; see the module's doc)."""
    endpoint, slot, parent_pid = argv[0], int(argv[1]), int(argv[2])
    link = PairLink(int(endpoint[3:])) if endpoint.startswith("fd:") else ZmqLink(endpoint, slot)
    return serve(link, Marker.attach(argv[3]) if len(argv) > 3 else NoMarker(), slot, parent_pid)


def serve(link: PairLink | ZmqLink, marker: Marker | NoMarker, slot: int, parent_pid: int) -> int:
    """Run the tasks the agent sends until it lets go of us. The first task binds this
    process to its job (``bind``); a task of another job is refused."""
    malloc.tune()  # payloads one after another: keep freed memory for the next (cluster/runtime/malloc.py)
    lifeline.die_with(parent_pid, signal.SIGKILL)
    # Ctrl-C in a terminal signals the whole process group; the agent decides
    # when its workers stop, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    link.send(wire.WorkerReady(slot, os.getpid()).encode())
    results = Results(link, marker)
    capture = Capture(results.live)
    capture.log_to_diagnostics("agents", "cluster")
    try:
        return _serve(link, results, capture, parent_pid)
    finally:
        capture.close()  # what is said of the worker's end reaches the journal


def _serve(link: PairLink | ZmqLink, results: Results, capture: Capture, parent_pid: int) -> int:
    functions: collections.OrderedDict = collections.OrderedDict()
    inbox: collections.deque[Item] = collections.deque()
    bound: str | None = None
    while True:
        try:
            inbox = receive(link, inbox)
        except channel.Closed:
            return 0  # the agent let go of us
        if results.due(more_to_run=bool(inbox)):
            results.send()
        elif results.items:
            results.hold()
        if not inbox:
            if not link.wait(PARENT_CHECK_MS) and os.getppid() != parent_pid:
                return 0
            continue
        item = inbox.popleft()
        if bound is None:
            bound = bind(item)
        if domain(item) != bound:
            reason = f"internal error: a worker of job {bound} was sent a task of job {domain(item)}"
            results.add(item, wire.LOST, payload.lost_error(reason))
            continue
        capture.begin((item.job_id, item.index, item.attempt))
        with results.task(item.seq):
            status, body = run_task(functions, item)
        for output in capture.end():  # before the result: its client then has all of it
            if not item.legacy:  # agents that send RunTask predate TaskOutput
                link.send(output.encode())
        results.add(item, status, body)


def domain(item: Item) -> str:
    """The job a task belongs to, as isolation goes: tasks of one client's jobs share workers
    when the client says so (an Executor's functions are one job to its user)."""
    shared = item.options.get("isolation")
    return shared if isinstance(shared, str) and shared else item.job_id


def bind(item: Item) -> str:
    """Make this process its job's: the job's private working and temporary directories
    (the agent made them; they go with the job), and the directories it shipped first on
    ``sys.path`` (agents/bundles.py). Nothing of another job ran here: the agent's
    template forked this process clean, and it never takes another job."""
    workdir, tmpdir = item.options.get("workdir"), item.options.get("tmpdir")
    paths = item.options.get("paths")
    if isinstance(paths, list):
        sys.path[:0] = [p for p in paths if isinstance(p, str)]
    if isinstance(workdir, str) and workdir:
        os.chdir(workdir)
    if isinstance(tmpdir, str) and tmpdir:
        os.environ["TMPDIR"] = tmpdir
        tempfile.tempdir = None  # tempfile reads TMPDIR again
    return domain(item)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
