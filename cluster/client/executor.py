"""``cluster.Executor``: a ``concurrent.futures.Executor`` backed by the cluster.

    from cluster import Executor
    with Executor(zk="127.0.0.1:2181") as ex:
        print(sum(ex.map(lambda x: x * x, range(10_000))))

It keeps the promises ``ProcessPoolExecutor`` makes (tests/test_futures_conformance.py
holds CPython's own tests of them, adapted; README, "The Executor and
concurrent.futures", lists what a remote executor does differently and why):

- ``submit`` never blocks. Up to ``window`` calls are on the cluster at once; more wait
  in the client, in order, and go as results come.
- A future is RUNNING once a worker has started its call (agents look for starts 5 ms
  after a worker's news, and report them with the next results: a call that ends sooner
  goes from PENDING to FINISHED; agents/starts.py). ``cancel()`` then fails, as in
  CPython, and never kills a call: one that started before its RUNNING arrived runs on,
  its result dropped. ``TaskFuture.stop()`` stops a call wherever it is (a running call's
  worker is killed and replaced) and fails its future with ``TaskStopped``.
- ``shutdown(wait=False)`` still runs every call submitted, and so does an interpreter
  that exits without calling shutdown; ``cancel_futures=True`` cancels the calls not
  started, and the running ones finish.
- ``map`` submits every call at once, or with ``buffersize`` (Python 3.14's) at most that
  many ahead of the consumer; its ``timeout`` is one deadline counted from the call.

Functions travel by value with cloudpickle, so lambdas and functions defined in
``__main__`` or a notebook work; the client's own modules they need travel as source
with them, and installed ones by reference, checked on the node against the client's
version (``code.py``). ``ship=[DIR, ...]`` sends directories along
(cluster/client/bundle.py): first on the tasks' ``sys.path``, and in their working
directory. Each distinct function is one job on the cluster (its blob is sent to each
agent once, not once per task). A job with no task in flight stays open for its
function's next task, but only the ``MAX_IDLE_JOBS`` most recently used do: an executor
that lives for days and sees a new lambda per call must not grow the cluster's jobs
without bound.

A function no node can load (its module is not installed there, its name is mistyped)
fails every call of it still pending with ``cluster.LoadError``; none of them ran. A node
that cannot load it while others can is logged once, on the ``cluster.client`` logger: it
happens on the client's IO thread, with no call of the user's to point a warning at, and
unconfigured logging still prints a warning on stderr.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cluster.client import bundle, code, records
from cluster.client.load_error import LoadError
from cluster.client.session import ClusterClient, JobHandle
from cluster.contract import payload, wire

FUNCTION_CACHE = 256
MAX_IDLE_JOBS = 32
EXIT_NOTICE_AFTER = 5.0  # seconds an exiting interpreter waits for calls before it says so

log = logging.getLogger("cluster.client")


class TaskStopped(Exception):
    """The call was stopped by ``TaskFuture.stop()`` while it ran."""


class TaskFuture(cf.Future):
    """A ``concurrent.futures.Future`` that can also stop a running call."""

    def __init__(self, executor: Executor, job: JobHandle, index: int) -> None:
        super().__init__()
        self._executor, self._job, self._index = executor, job, index
        self._stop = False  # cancelled by stop(): a call already running is killed
        self._written: dict[str, bytearray] | None = None  # by stream, made by the IO thread at the first output

    def output(self) -> dict[str, str]:
        """What the call wrote to its stdout and stderr so far, complete once the future is
        done: the first 64 KiB of each, then a line saying how many more bytes were not kept."""
        written = self._written or {"out": bytearray(), "err": bytearray()}
        return {
            "stdout": bytes(written["out"]).decode(errors="replace"),
            "stderr": bytes(written["err"]).decode(errors="replace"),
        }

    def stop(self) -> bool:
        """Stop the call wherever it is. A call not reported RUNNING is cancelled, as by
        ``cancel()``, and killed should it have started meanwhile; a RUNNING one's worker
        is killed (it is replaced, and the other calls it held run elsewhere) and the
        future fails with ``TaskStopped``. False when the call has finished already."""
        self._stop = True
        if self.cancel():
            return True
        try:
            self.set_exception(TaskStopped("stopped by TaskFuture.stop() while it ran"))
        except cf.InvalidStateError:
            return False  # it finished first
        self._executor._forget(self)
        return True

    def _started(self) -> None:
        """A worker started the call (the IO thread tells): PENDING becomes RUNNING."""
        if self.running() or self.done():
            return
        try:
            self.set_running_or_notify_cancel()
        except RuntimeError:
            pass  # finished or cancelled-and-notified meanwhile: nothing to do


class Executor(cf.Executor):
    def __init__(
        self,
        zk: str | None = None,
        cluster: str | None = None,
        *,
        max_workers: int | None = None,
        retries: int = 2,
        window: int = 10_000,
        connect_timeout: float = 10.0,
        timeout: float | None = None,
        max_memory: int | None = None,
        keys: str | None = None,
        ship: Iterable[str | os.PathLike[str]] = (),
    ):
        """``max_workers``: at most this many of its calls run at once (default: as many as
        the cluster has workers for; ``ProcessPoolExecutor``'s argument, so code moves with
        one line changed); ``window``: calls on the cluster at once, the rest wait in the
        client; ``timeout``: seconds a call may run once started before its worker is killed
        and it fails with ``TaskTimeout``; ``max_memory``: bytes of RSS a worker may use for
        a call before it is killed (the call is retried, then ``WorkerLost``); ``keys``: a
        CURVE keys directory (default: env CLUSTER_KEYS); ``ship``: directories whose files
        every call finds in its working directory and imports from first (raises
        ``BundleTooLarge`` before anything is sent for one over the cluster's payload limit)."""
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if window <= 0:
            raise ValueError("window must be greater than 0")
        if max_workers is not None:
            window = min(window, max_workers)  # calls on the cluster bound those running
        self._bundles = [bundle.build(directory) for directory in ship]
        self._client = ClusterClient(
            zk or os.environ.get("CLUSTER_ZK", "127.0.0.1:2181"),
            cluster or os.environ.get("CLUSTER_NAME", "default"),
            connect_timeout=connect_timeout,
            keys=os.environ.get("CLUSTER_KEYS", "") if keys is None else keys,
            zk_auth=os.environ.get("CLUSTER_ZK_AUTH", ""),
        )
        self._window = window
        self._options = {
            "retries": retries,
            "window": window,
            "result_format": payload.RESULT_PICKLE,
            "timeout": timeout,
            "max_memory": max_memory,
            # Its functions are one job to its user: they share workers, which no other job touches.
            "isolation": f"executor-{uuid.uuid4().hex}",
            # Its functions are bytecode, which loads only on this Python minor version: the
            # coordinator sends them to agents that run it, and fails a job no agent can run.
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        }
        self._lock = threading.Lock()
        # By id(fn): a weak reference to the function (its id is reused once it is gone: the
        # reference tells), its blob and digest. Weak, so that caching never keeps a function,
        # or the object of a bound method, alive.
        self._packed: collections.OrderedDict[int, tuple[weakref.ref, bytes, str]] = collections.OrderedDict()
        # By function digest: one cluster job per function, least recently used first.
        self._jobs: collections.OrderedDict[str, JobHandle] = collections.OrderedDict()
        self._submitting: collections.Counter[str] = collections.Counter()  # submits under way, by digest
        self._futures: dict[int, TaskFuture] = {}  # by index: calls without a result yet
        self._counter = itertools.count()
        self._shutdown = False
        self._closed = False
        self._done = self._failed = 0  # calls with a result, and those that raised, for the job's record
        try:
            self._record = records.open_job(
                self._client.zk, self._client.cluster, _label(), 0, keys_dir=self._client.keys_dir
            )
        except BaseException:
            self._client.close()
            raise
        self._options["record"] = self._record.id
        self._record.on_cancel(self._cancelled_remotely)
        _live.add(self)

    @property
    def job_id(self) -> int:
        """This executor's job id, as ``clusterctl jobs`` lists it (all its functions are one job)."""
        return self._record.id

    @property
    def window(self) -> int:
        return self._window

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> TaskFuture:
        with _exit_lock:
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        packed = payload.pack_args(args, kwargs)
        job = self._job_for(fn)
        try:
            index = next(self._counter)
            future = TaskFuture(self, job, index)
            self._futures[index] = future
            try:
                job.submit_nowait(index, packed)
            except LoadError as exc:  # its job failed since _job_for: the call fails like the others
                self._fail(future, exc)
            except BaseException:  # refused (too large): no future is left pending
                self._futures.pop(index, None)
                raise
        finally:
            with self._lock:
                self._submitting[job.digest] -= 1
        future.add_done_callback(self._on_done)
        return future

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator:
        """Results in input order. Every call is submitted now, or with ``buffersize`` at
        most that many ahead of the results consumed. ``timeout``: seconds from this call
        until the last result; past it, the next result raises TimeoutError. ``chunksize``
        is accepted for ProcessPoolExecutor's sake: calls travel in batches anyway."""
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        inputs = zip(*iterables)
        ahead = inputs if buffersize is None else itertools.islice(inputs, buffersize)
        futures = collections.deque(self.submit(fn, *args) for args in ahead)
        # Weak, so that an abandoned iterator does not keep the executor alive.
        executor = weakref.ref(self) if buffersize is not None else None

        def results() -> Iterator:
            try:
                while futures:
                    if executor is not None:
                        ex = executor()
                        args = next(inputs, None) if ex is not None else None
                        if ex is not None and args is not None:
                            futures.append(ex.submit(fn, *args))
                        del ex
                    yield _result_or_cancel(futures.popleft(), None if end is None else end - time.monotonic())
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls from now on. ``cancel_futures``: cancel the calls not started (the
        running ones finish). ``wait``: return once every call left has finished; without
        it they still run, and the connection closes after the last one."""
        with _exit_lock:
            self._shutdown = True
        if cancel_futures:
            for future in list(self._futures.values()):
                future.cancel()  # refused by a running call
        if wait:
            self._drain()
        else:
            threading.Thread(target=self._drain, name="cluster-executor-shutdown", daemon=True).start()

    # -------------------------------------------------------------- internals

    def _cancelled_remotely(self) -> None:
        """``clusterctl job cancel``: no new calls, and every call left is stopped (those
        not started are cancelled, running ones fail with TaskStopped)."""
        with _exit_lock:
            self._shutdown = True
        for future in list(self._futures.values()):
            future.stop()

    def _drain(self) -> None:
        """Wait for every call left, then close the connection (once)."""
        cf.wait(list(self._futures.values()))
        self._close()

    def _drain_at_exit(self) -> None:
        """``_drain`` for an exiting interpreter, which says what it waits for, and gives
        up once the coordinator has been silent for ``connect_timeout``: a script must not
        hang at its end for a cluster that is gone."""
        pending: Iterable[cf.Future] = list(self._futures.values())
        started, said, silent_since = time.monotonic(), False, None
        while pending:
            _, pending = cf.wait(pending, timeout=0.5)
            now = time.monotonic()
            if pending and not said and now - started >= EXIT_NOTICE_AFTER:
                said = True
                print(f"cluster.Executor: waiting for {len(pending)} calls to finish before exit", file=sys.stderr)
            silent_since = (silent_since or now) if self._client.coordinator_silent else None
            if pending and silent_since is not None and now - silent_since >= self._client.connect_timeout:
                print(
                    f"cluster.Executor: abandoning {len(pending)} calls: the coordinator has not answered for "
                    f"{now - self._client.last_heard:.0f} s",
                    file=sys.stderr,
                )
                break
        self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        submitted = next(self._counter)
        if self._done < submitted:
            state = "cancelled"  # some calls were cancelled, stopped or abandoned
        else:
            state = "failed" if self._failed else "done"
        self._record.finish(state, total=submitted, done=self._done, failed=self._failed)
        self._client.close()

    def _job_for(self, fn: Callable) -> JobHandle:
        """The job for fn's tasks, opened if need be; counted as submitting until
        submit() is done with it, so it is not closed under the caller."""
        with self._lock:
            blob, digest = self._packing(fn)
            job = self._jobs.get(digest)
            if job is None or job.load_error is not None:  # a failed one is tried again: nodes change
                self._close_idle_jobs()
                job = self._client.open_job(
                    blob,
                    self._options,
                    self._on_result,
                    self._bundles,
                    self._on_started,
                    self._on_output,
                    self._on_refused,
                    self._on_failed,
                )
                self._jobs[digest] = job
            self._jobs.move_to_end(digest)
            self._submitting[digest] += 1
            return job

    def _packing(self, fn: Callable) -> tuple[bytes, str]:
        """fn packed once while it is among the FUNCTION_CACHE most recently packed: finding
        the modules it needs reads and parses files, which no task should pay for. A bound
        method is a new object at each attribute access, and a builtin cannot be referenced
        weakly: those are packed at each submit."""
        packed = self._packed.get(id(fn))
        if packed is not None and packed[0]() is fn:
            self._packed.move_to_end(id(fn))
            return packed[1], packed[2]
        blob = code.pack_callable(fn)
        digest = payload.digest(blob)
        try:
            ref = weakref.ref(fn)
        except TypeError:
            return blob, digest
        self._packed[id(fn)] = (ref, blob, digest)
        if len(self._packed) > FUNCTION_CACHE:
            self._packed.popitem(last=False)
        return blob, digest

    def _close_idle_jobs(self) -> None:
        """Close the least recently used jobs with nothing in flight, beyond MAX_IDLE_JOBS."""
        idle = [d for d, job in self._jobs.items() if not self._submitting[d] and job.idle]
        for digest in idle[: max(0, len(idle) - MAX_IDLE_JOBS + 1)]:
            self._jobs.pop(digest).close()
            del self._submitting[digest]

    def _on_done(self, future: cf.Future) -> None:
        if future.cancelled():
            assert isinstance(future, TaskFuture)
            self._forget(future)
            try:
                # CANCELLED -> CANCELLED_AND_NOTIFIED, or wait() and as_completed() never see it done.
                future.set_running_or_notify_cancel()
            except RuntimeError:
                pass  # already notified

    def _forget(self, future: TaskFuture) -> None:
        """The call is cancelled or stopped: the cluster drops it; one that runs already
        is killed only when stopped (``cancel()`` lets it finish, its result dropped)."""
        if self._futures.pop(future._index, None) is not None:
            future._job.cancel([future._index], stop=future._stop)

    def _on_started(self, index: int) -> None:
        """Runs on the client's IO thread."""
        future = self._futures.get(index)
        if future is not None:
            future._started()

    def _on_output(self, index: int, stream: str, data: wire.Buffer) -> None:
        """Runs on the client's IO thread, before the call's result."""
        future = self._futures.get(index)
        if future is not None:
            if future._written is None:  # most calls write nothing: no buffers for them
                future._written = {"out": bytearray(), "err": bytearray()}
            future._written[stream] += data

    def _on_refused(self, error: LoadError) -> None:
        """Runs on the client's IO thread: a node cannot load a function, others can."""
        log.warning(
            "cluster.Executor: a function does not load on %s: %s; its calls run on the other nodes",
            error.node,
            error.error,
        )

    def _on_failed(self, job: JobHandle, error: LoadError) -> None:
        """Runs on the client's IO thread: no node can load the job's function. Every call
        of it still pending fails with the error; the next call of it opens a new job."""
        for future in [f for f in list(self._futures.values()) if f._job is job]:
            self._fail(future, error)

    def _fail(self, future: TaskFuture, error: LoadError) -> None:
        if self._futures.pop(future._index, None) is None:
            return  # cancelled or stopped by the user, or failed already
        self._done += 1
        self._failed += 1
        try:
            future.set_exception(LoadError(error.errors))  # one each: a raised exception gathers its traceback
        except cf.InvalidStateError:
            pass

    def _on_result(self, index: int, status: int, body: wire.Buffer) -> None:
        """Runs on the client's IO thread, like a process pool's result thread."""
        future = self._futures.pop(index, None)
        if future is None:
            return  # cancelled or stopped by the user: the result is dropped
        self._done += 1
        if status != wire.OK:
            self._failed += 1
        try:
            if status == wire.OK:
                future.set_result(payload.load_result(body, payload.RESULT_PICKLE))
            else:
                future.set_exception(payload.error_to_exception(payload.load_error(body)))
        except cf.InvalidStateError:
            pass  # cancelled or stopped meanwhile
        except Exception as exc:  # a result that cannot be unpickled on this side
            try:
                future.set_exception(exc)
            except cf.InvalidStateError:
                pass


def _label() -> str:
    """What an Executor's job record says it runs: the script that made it."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"Executor in {script}" if script else "Executor"


def _result_or_cancel(future: cf.Future, timeout: float | None) -> Any:
    """Its result; a call not finished in time is cancelled (if it has not started)."""
    try:
        return future.result(timeout)
    finally:
        future.cancel()


# What a process pool promises when the interpreter exits: every call submitted runs (a
# script may submit and end without shutdown), and nothing may be submitted after that.
_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_exit_lock = threading.Lock()
_exiting = False


def _python_exit() -> None:
    global _exiting
    with _exit_lock:
        _exiting = True
    for executor in list(_live):
        executor._drain_at_exit()


# threading's own exit hooks run before the interpreter joins its threads and before
# atexit's, while the client's IO thread still runs: concurrent.futures uses the same.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_python_exit)
else:  # pragma: no cover - every CPython since 3.9 has it
    import atexit

    atexit.register(_python_exit)
