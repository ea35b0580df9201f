"""One job as its client holds it: the tasks handed in by user threads, those sent and
without a result yet, and the window that bounds them.

``JobHandle.submit`` blocks while the job's window is full: that window is what keeps
the client's memory bounded however many inputs stream in (``clusterctl submit``).
``submit_nowait`` never blocks: beyond the window, tasks wait in the job's backlog, in
the client, and go as results free room (the Executor's, as a process pool's submit
never blocks either). The session's IO thread (session.py) takes new tasks, keeps them
in ``outstanding`` until their results arrive, and hands each result to ``on_result``
once, news that a worker started a task to ``on_started``, and what a task wrote to
its stdout or stderr to ``on_output``, always before its result. A node that cannot load
the job's function goes to ``on_refused`` (once per node; the job goes on elsewhere);
a job that no node can load ends, and goes to ``on_failed``.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cluster.client.load_error import LoadError
from cluster.contract import payload, wire

if TYPE_CHECKING:
    from cluster.client.bundle import Bundle

BATCH = 256  # tasks per SubmitTasks message, at most

ResultCallback = Callable[[int, int, wire.Buffer], None]  # (index, status, payload)
StartedCallback = Callable[[int], None]  # (index): a worker started that task
OutputCallback = Callable[[int, str, wire.Buffer], None]  # (index, "out" or "err", bytes the task wrote)
RefusedCallback = Callable[[LoadError], None]  # a node cannot load the function (one node's error)
FailedCallback = Callable[["JobHandle", LoadError], None]  # no node can: the job is over


class Window:
    """How many more tasks a job may have without a result; ``take`` blocks while none.

    A blocked submitter is woken once a batch of room is free, not at every result:
    waking it per result made the submitting thread and the IO thread trade the GIL
    once per task whenever a job outran its window."""

    def __init__(self, size: int):
        self.size = self.free = size
        self.wake_at = min(BATCH, max(1, size // 8))
        self._cond = threading.Condition(threading.Lock())
        self._waiting = False

    def take(self, timeout: float | None = None) -> bool:
        with self._cond:
            if not self.free:
                self._waiting = True
                if not self._cond.wait_for(lambda: self.free > 0, timeout):
                    return False
            self.free -= 1
            return True

    def give(self, n: int = 1) -> None:
        with self._cond:
            self.free += n
            # Every task without a result gives its room back in the end, so free
            # reaches size >= wake_at: a waiter is never left behind.
            if self._waiting and self.free >= self.wake_at:
                self._waiting = False
                self._cond.notify_all()


class JobHandle:
    def __init__(
        self,
        post: Callable[[tuple[str, Any]], None],
        function: bytes,
        options: dict,
        on_result: ResultCallback,
        bundles: Sequence[Bundle] = (),
        on_started: StartedCallback | None = None,
        on_output: OutputCallback | None = None,
        on_refused: RefusedCallback | None = None,
        on_failed: FailedCallback | None = None,
    ):
        self._post = post  # to the session's IO thread, which owns the socket
        self.job_id = uuid.uuid4().hex
        self.function = function
        self.digest = payload.digest(function)
        # Shipped directories: sent before the SubmitJob that names them, first on the tasks' sys.path.
        self.bundles = tuple(bundles)
        self.options = dict(options, bundles=[b.digest for b in self.bundles]) if self.bundles else options
        if on_output is not None:  # the coordinator forwards tasks' output only to clients that ask
            self.options = dict(self.options, output=True)
        if on_failed is not None:  # without it, a job no node can load fails task by task, as before
            self.options = dict(self.options, **{wire.TAKES_LOAD_FAILURES: True})
        self.bundles_resent = False  # after the coordinator said it had lost them (see ClusterClient)
        self.on_result = on_result
        self.on_started = on_started
        self.on_output = on_output
        self.on_refused = on_refused
        self.on_failed = on_failed
        self.window = options.get("window", 10_000)
        self.accepted = threading.Event()
        self.workers = 0
        self.max_payload = 0  # from JobAccepted
        self.failure: str | None = None
        self.load_error: LoadError | None = None  # no node can load its function: the job is over
        self._room = Window(self.window)
        self._lock = threading.Lock()
        self._new: collections.deque[tuple[int, wire.Buffer]] = collections.deque()
        # submit_nowait's tasks beyond the window, in order; they hold no room until they move to _new.
        self._backlog: collections.OrderedDict[int, wire.Buffer] = collections.OrderedDict()
        self.outstanding: dict[int, wire.Buffer] = {}  # owned by the IO thread
        self.running: set[int] = set()  # the outstanding tasks a worker started; the IO thread's
        self.closed = False

    def submit(self, index: int, args: wire.Buffer, timeout: float | None = None) -> bool:
        """Queue a task; blocks while ``window`` tasks have no result yet.
        Raises PayloadTooLarge, before anything is sent, for arguments over the limit."""
        self._check(index, args)
        if not self._room.take(timeout):
            return False
        if self.closed:
            self._room.give()
            raise RuntimeError("job is closed")
        with self._lock:
            self._hand_over(index, args)
        return True

    def submit_nowait(self, index: int, args: wire.Buffer) -> None:
        """Queue a task without blocking: with the window full it waits in the backlog,
        behind those already there. Raises PayloadTooLarge as ``submit`` does."""
        self._check(index, args)
        if self.closed:
            raise self.load_error or RuntimeError("job is closed")
        with self._lock:
            if not self._backlog and self._room.take(0):
                self._hand_over(index, args)
            else:
                self._backlog[index] = args

    def _check(self, index: int, args: wire.Buffer) -> None:
        if self.max_payload and len(args) > self.max_payload:
            raise payload.PayloadTooLarge(
                f"task {index}: arguments are {len(args) / 2**20:.1f} MiB; the cluster "
                f"accepts at most {self.max_payload / 2**20:.1f} MiB per task"
            )

    def _hand_over(self, index: int, args: wire.Buffer) -> None:
        """To the IO thread (under ``_lock``, with the task's room taken)."""
        was_empty = not self._new
        self._new.append((index, args))
        if was_empty:  # one wake-up per burst, not per task: the IO thread takes them all
            self._post(("tasks", None))

    @property
    def idle(self) -> bool:
        """No task without its result (nor a submit about to add one: see the window)."""
        return self._room.free == self._room.size and not self._backlog

    def cancel(self, indices: Sequence[int] | None, *, stop: bool) -> None:
        """Drop tasks: the cluster forgets them and their window room is freed. A running
        one's worker is killed with ``stop``; else it runs to its end and its result is
        dropped. ``None``: every task not known to have started (``clusterctl submit``'s
        Ctrl-C). Safe from any thread."""
        self._post(("cancel", (self, None if indices is None else list(indices), stop)))

    def close(self) -> None:
        """Tell the cluster the job is over: queued tasks are dropped, running ones stopped."""
        if not self.closed:
            self.closed = True
            self._unqueue_all()
            self._post(("close", self))

    # --- IO thread side

    def _take_new(self) -> list[tuple[int, wire.Buffer]]:
        with self._lock:
            out = list(self._new)
            self._new.clear()
        return out

    def _unqueue(self, index: int) -> bool:
        """Take a task back from the backlog; False when it is not there (sent, or to be)."""
        with self._lock:
            return self._backlog.pop(index, None) is not None

    def _unqueue_all(self) -> None:
        with self._lock:
            self._backlog.clear()

    def _release(self, n: int) -> None:
        """Room for ``n`` more tasks: the backlog's oldest take it first."""
        with self._lock:
            moved = min(n, len(self._backlog))
            for _ in range(moved):
                self._new.append(self._backlog.popitem(last=False))
        if n > moved:
            self._room.give(n - moved)

    def _results(self, items: list, bodies: tuple, started: Sequence[int] = ()) -> None:
        for index in started:
            if index in self.outstanding and index not in self.running:
                self.running.add(index)
                if self.on_started is not None:
                    self.on_started(index)
        delivered = 0
        running = self.running
        for (index, status), body in zip(items, bodies):
            if self.outstanding.pop(index, None) is None:
                continue  # a duplicate (resubmission raced a late result): already delivered
            if running:
                running.discard(index)
            delivered += 1
            self.on_result(index, status, body)
        if delivered:
            self._release(delivered)

    def _cannot_load(self, error: LoadError) -> None:
        """No node can load the function: the coordinator has ended the job. No task of it
        will have a result; new ones are refused with ``error``."""
        self.load_error, self.closed = error, True
        self._unqueue_all()
        self.outstanding.clear()
        self.running.clear()
        if self.on_failed is not None:
            self.on_failed(self, error)

    def _output(self, index: int, stream: str, data: wire.Buffer) -> None:
        if self.on_output is not None and index in self.outstanding:
            self.on_output(index, stream, data)
