"""``cluster.Executor``: a ``concurrent.futures.Executor`` backed by the cluster.

    from cluster import Executor
    with Executor(zk="127.0.0.1:2181") as ex:
        print(sum(ex.map(lambda x: x * x, range(10_000))))

Functions travel by value with cloudpickle, so lambdas and functions defined in
``__main__`` or a notebook work; the client's own modules they need travel as source
with them, and installed ones by reference, checked on the node against the client's
version (``code.py``). ``ship=[DIR, ...]`` sends directories along
(cluster/client/bundle.py): first on the tasks' ``sys.path``, and in their working
directory. Each distinct function is one job on the
cluster (its blob is sent to each agent once, not once per task). A job with no
task in flight stays open for its function's next task, but only the
``MAX_IDLE_JOBS`` most recently used do: an executor that lives for days and
sees a new lambda per call must not grow the cluster's jobs without bound.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cluster.client import bundle, code
from cluster.client.session import ClusterClient, JobHandle
from cluster.contract import payload, wire

FUNCTION_CACHE = 256
MAX_IDLE_JOBS = 32


class Executor(cf.Executor):
    def __init__(
        self,
        zk: str | None = None,
        cluster: str | None = None,
        *,
        retries: int = 2,
        window: int = 10_000,
        connect_timeout: float = 10.0,
        timeout: float | None = None,
        max_memory: int | None = None,
        keys: str | None = None,
        ship: Iterable[str | os.PathLike[str]] = (),
    ):
        """``timeout``: seconds a task may run before its worker is killed and it
        fails with ``TaskTimeout``; ``max_memory``: bytes of RSS a worker may use
        for a task before it is killed (the task is retried, then ``WorkerLost``);
        ``keys``: a CURVE keys directory (default: env CLUSTER_KEYS); ``ship``:
        directories whose files every task finds in its working directory and
        imports from first (raises ``BundleTooLarge`` before anything is sent for
        one over the cluster's payload limit)."""
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
        # By id(fn): the function (holding it keeps its id from being reused), its blob and digest.
        self._packed: collections.OrderedDict[int, tuple[Callable, bytes, str]] = collections.OrderedDict()
        # By function digest: one cluster job per function, least recently used first.
        self._jobs: collections.OrderedDict[str, JobHandle] = collections.OrderedDict()
        self._submitting: collections.Counter[str] = collections.Counter()  # submits under way, by digest
        self._futures: dict[int, cf.Future] = {}
        self._counter = itertools.count()
        self._shutdown = False

    @property
    def window(self) -> int:
        return self._window

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        job = self._job_for(fn)
        future: cf.Future = cf.Future()
        index = next(self._counter)
        self._futures[index] = future
        try:
            job.submit(index, payload.pack_args(args, kwargs))
        except BaseException:  # refused (too large) or interrupted: no future is left pending
            self._futures.pop(index, None)
            raise
        finally:
            with self._lock:
                self._submitting[job.digest] -= 1

        def on_done(f: cf.Future) -> None:
            if f.cancelled():
                self._cancelled(job, index, f)

        future.add_done_callback(on_done)
        return future

    def _cancelled(self, job: JobHandle, index: int, future: cf.Future) -> None:
        self._futures.pop(index, None)
        # CANCELLED -> CANCELLED_AND_NOTIFIED, or wait() and as_completed() never see it done.
        future.set_running_or_notify_cancel()
        job.cancel(index)

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator:
        """Results in input order. Lazy and bounded: at most ``buffersize``
        (default: the window) tasks are submitted ahead of the consumer."""
        limit = buffersize or self.window
        inputs = zip(*iterables)
        pending: collections.deque[cf.Future] = collections.deque(
            self.submit(fn, *args) for args in itertools.islice(inputs, limit)
        )

        def results() -> Iterator:
            try:
                while pending:
                    yield pending.popleft().result(timeout)
                    for args in itertools.islice(inputs, 1):
                        pending.append(self.submit(fn, *args))
            finally:
                for future in pending:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        if cancel_futures:
            for future in list(self._futures.values()):
                future.cancel()
        if wait:
            cf.wait(list(self._futures.values()))
        self._client.close()

    # -------------------------------------------------------------- internals

    def _job_for(self, fn: Callable) -> JobHandle:
        """The job for fn's tasks, opened if need be; counted as submitting until
        submit() is done with it, so it is not closed under the caller."""
        with self._lock:
            _, blob, digest = self._packing(fn)
            job = self._jobs.get(digest)
            if job is None:
                self._close_idle_jobs()
                job = self._client.open_job(blob, self._options, self._on_result, self._bundles)
                self._jobs[digest] = job
            self._jobs.move_to_end(digest)
            self._submitting[digest] += 1
            return job

    def _packing(self, fn: Callable) -> tuple[Callable, bytes, str]:
        """fn packed once while it is among the FUNCTION_CACHE most recently packed: finding
        the modules it needs reads and parses files, which no task should pay for."""
        packed = self._packed.get(id(fn))
        if packed is None or packed[0] is not fn:
            blob = code.pack_callable(fn)
            packed = self._packed[id(fn)] = (fn, blob, payload.digest(blob))
            if len(self._packed) > FUNCTION_CACHE:
                self._packed.popitem(last=False)
        return packed

    def _close_idle_jobs(self) -> None:
        """Close the least recently used jobs with nothing in flight, beyond MAX_IDLE_JOBS."""
        idle = [d for d, job in self._jobs.items() if not self._submitting[d] and job.idle]
        for digest in idle[: max(0, len(idle) - MAX_IDLE_JOBS + 1)]:
            self._jobs.pop(digest).close()
            del self._submitting[digest]

    def _on_result(self, index: int, status: int, body: wire.Buffer) -> None:
        """Runs on the client's IO thread, like a process pool's result thread."""
        future = self._futures.pop(index, None)
        if future is None or not future.set_running_or_notify_cancel():
            return  # cancelled by the user: the result is dropped
        try:
            if status == wire.OK:
                future.set_result(payload.load_result(body, payload.RESULT_PICKLE))
            else:
                future.set_exception(payload.error_to_exception(payload.load_error(body)))
        except Exception as exc:  # a result that cannot be unpickled on this side
            future.set_exception(exc)
