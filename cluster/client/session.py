"""The client's session with the leader, shared by ``clusterctl submit`` and ``Executor``.

A ``ClusterClient`` finds the leader in ZooKeeper and runs one background
thread that owns the DEALER socket. User threads hand it tasks through
``JobHandle.submit`` (job.py). Every task stays in its job's ``outstanding``
until its result arrives, so when the leader changes the thread reconnects to
the new one and resubmits exactly what has no result yet; a result for an index
not outstanding is a duplicate and is dropped, so each result reaches the user
exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import zmq
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from cluster.client.job import (
    BATCH,
    FailedCallback,
    JobHandle,
    OutputCallback,
    RefusedCallback,
    ResultCallback,
    StartedCallback,
    Window,
)
from cluster.client.load_error import LoadError
from cluster.contract import layout, security, wire
from cluster.contract.layout import LeaderRecord
from cluster.runtime import loop
from cluster.runtime.zk import ZooKeeperUnreachable, read_leader
from cluster.runtime.zk import close as zk_close
from cluster.runtime.zk import connect as zk_connect

if TYPE_CHECKING:
    from cluster.client.bundle import Bundle

log = logging.getLogger("cluster.client")

HEARTBEAT = 1.0
BATCH_BYTES = 8 * 2**20


class ClusterUnavailable(RuntimeError):
    """No coordinator could be reached in time."""


class ClusterClient:
    def __init__(self, zk: str, cluster: str, *, connect_timeout: float = 10.0, keys: str = "", zk_auth: str = ""):
        self.cluster = cluster
        self.connect_timeout = connect_timeout
        self.keys = security.load(keys, "client") if keys else None
        self.keys_dir = keys
        deadline = time.monotonic() + connect_timeout
        self.zk: KazooClient = zk_connect(zk, timeout=connect_timeout, auth_file=zk_auth)
        try:
            self.leader = self._wait_for_leader(deadline)
            self._check_keys()
        except BaseException:
            zk_close(self.zk)
            raise
        self.identity = uuid.uuid4().hex.encode()
        self.jobs: dict[str, JobHandle] = {}
        self.coordinator_silent = False
        self.refused = False  # the coordinator refused a message: it did not lead yet, or no longer
        self.agents = -1  # agents the leader has, from its heartbeat replies; -1 until one arrives
        self._bundles_sent: set[str] = set()  # digests the leader got over this connection
        self._waker = loop.Waker()
        self._stopping = False
        self._cancels: dict[
            tuple[str, bool], list[int]
        ] = {}  # (job, stop) -> tasks to cancel, sent after each batch of events
        self._event_handlers: dict[str, Callable[[Any], None]] = {
            "open": self._on_open,
            "close": self._on_close,
            "cancel": self._on_cancel,
            "leader": self._on_leader,
            "stop": self._on_stop,
            "tasks": lambda _: None,  # only wakes the thread: the loop sends new tasks every turn
        }
        self._message_handlers: dict[type, Callable[[Any], None]] = {
            wire.Heartbeat: self._on_heartbeat,
            wire.TaskResults: self._on_task_results,
            wire.TaskOutput: self._on_task_output,
            wire.JobAccepted: self._on_job_accepted,
            wire.JobFailed: self._on_job_failed,
            wire.LoadFailed: self._on_load_failed,
            wire.Refused: self._on_refused,
        }
        self._thread = threading.Thread(target=self._run, name="cluster-client", daemon=True)
        self._thread.start()
        self.zk.DataWatch(layout.leader_path(cluster), self._on_leader_znode)

    def _wait_for_leader(self, deadline: float) -> LeaderRecord:
        while True:
            try:
                record = read_leader(self.zk, self.cluster, timeout=max(0.1, deadline - time.monotonic()))
            except KazooTimeoutError as exc:  # connected, then the ensemble went away
                raise ZooKeeperUnreachable(f"{exc} while looking up the leader") from None
            if record is not None:
                return record
            if time.monotonic() >= deadline:
                raise ClusterUnavailable(
                    f"no coordinator is running for cluster {self.cluster!r} (nothing at "
                    f"{layout.leader_path(self.cluster)} after {self.connect_timeout:g} s); "
                    "start one with `clusterctl coordinator` or `clusterctl up`"
                )
            time.sleep(0.1)

    def _check_keys(self) -> None:
        if self.leader.curve_key and self.keys is None:
            raise ClusterUnavailable(
                f"cluster {self.cluster!r} requires CURVE keys: give --keys DIR (env "
                "CLUSTER_KEYS) holding client.key_secret and coordinator.key"
            )
        if self.leader.curve_key and self.keys and self.keys.coordinator.decode() != self.leader.curve_key:
            raise ClusterUnavailable(
                "the leader's CURVE key in ZooKeeper is not coordinator.key from --keys; "
                "the keys are out of date, or this is not the cluster you think"
            )

    def open_job(
        self,
        function: bytes,
        options: dict,
        on_result: ResultCallback,
        bundles: Sequence[Bundle] = (),
        on_started: StartedCallback | None = None,
        on_output: OutputCallback | None = None,
        on_refused: RefusedCallback | None = None,
        on_failed: FailedCallback | None = None,
    ) -> JobHandle:
        """``bundles`` (cluster/client/bundle.py) go to the leader before the job, each once.
        ``on_started(index)``: a worker started that task (coordinators of earlier releases
        do not say; then a task's result is the first news of it). ``on_output(index,
        stream, data)``: the task wrote ``data`` to its stdout ("out") or stderr ("err");
        all of it comes before the task's result. ``on_refused(error)``: a node cannot load
        the function (once per node; the others run the tasks; without it, logged);
        ``on_failed(job, error)``: no node can, and the job is over (without it, each task
        fails with the error instead, as for clients of earlier releases). All run on the
        IO thread."""
        job = JobHandle(self._post, function, options, on_result, bundles, on_started, on_output, on_refused, on_failed)
        self._post(("open", job))
        if not job.accepted.wait(self.connect_timeout):
            raise ClusterUnavailable(
                f"the coordinator at {self.leader.endpoint} did not answer within {self.connect_timeout:g} s"
                + (" (are --keys the ones the cluster allows?)" if self.keys else "")
            )
        if job.failure:
            raise ClusterUnavailable(job.failure)
        return job

    def close(self) -> None:
        if self._stopping:
            return
        for job in list(self.jobs.values()):
            job.close()
        self._post(("stop", None))
        self._thread.join(timeout=5)
        zk_close(self.zk)

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- threads

    def _post(self, event: tuple[str, Any]) -> None:
        self._waker.post(event)

    def _on_leader_znode(self, data: bytes | None, stat: object) -> bool | None:
        if self._stopping:
            return False
        if data:
            try:
                self._post(("leader", LeaderRecord.from_bytes(data)))
            except layout.BadRecord as exc:
                log.warning("ignoring leader znode: %s", exc)
        return None

    def _connect(self) -> None:
        old: zmq.Socket | None = getattr(self, "sock", None)  # the last leader's
        if old is not None:
            old.close(0)
        self.sock: zmq.Socket = loop.configure(self.ctx.socket(zmq.DEALER))
        self.sock.setsockopt(zmq.ROUTING_ID, self.identity)
        if self.keys is not None and self.leader.curve_key:
            security.connect_to(self.sock, self.keys, self.keys.coordinator)
        self.sock.connect(self.leader.endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self._waker.fd, zmq.POLLIN)
        self.last_heard = time.monotonic()
        self._bundles_sent.clear()

    def _run(self) -> None:
        self.ctx = zmq.Context()
        self._connect()
        next_beat = 0.0
        try:
            while not self._stopping:
                ready = dict(self.poller.poll(loop.poll_ms(next_beat)))
                if self._waker.fd in ready:
                    for kind, value in self._waker.drain():
                        self._on_event(kind, value)
                    self._send_cancels()
                if self.sock in ready:
                    self._read()
                self._send_new()
                now = time.monotonic()
                if now >= next_beat:
                    loop.send(self.sock, wire.Heartbeat(self.identity.decode(), self.leader.epoch))
                    next_beat = now + HEARTBEAT
                    silent = now - self.last_heard > 5 * HEARTBEAT
                    if silent and not self.coordinator_silent:
                        log.warning("coordinator %s is silent; waiting for it or a new leader", self.leader.endpoint)
                    self.coordinator_silent = silent
        finally:
            self.sock.close(0)
            self.ctx.term()
            self._waker.close()

    def _on_event(self, kind: str, value: Any) -> None:
        self._event_handlers[kind](value)

    def _on_open(self, job: JobHandle) -> None:
        self.jobs[job.job_id] = job
        self._send_job(job)

    def _on_close(self, job: JobHandle) -> None:
        self.jobs.pop(job.job_id, None)
        loop.send(self.sock, wire.CancelJob(job.job_id))

    def _on_cancel(self, value: tuple[JobHandle, list[int] | None, bool]) -> None:
        """Tasks still in the backlog are just forgotten; those sent are cancelled on the
        cluster after this batch of events, in one message per job (shutdown cancels a
        future at a time). ``None``: every task not known to have started."""
        job, indices, stop = value
        self._send_new()  # so the tasks are outstanding (and their cancel follows their submit)
        if indices is None:
            job._unqueue_all()
            indices = [i for i in job.outstanding if i not in job.running]
        sent = [i for i in indices if not job._unqueue(i) and job.outstanding.pop(i, None) is not None]
        job.running.difference_update(sent)
        if sent:
            job._release(len(sent))
            self._cancels.setdefault((job.job_id, stop), []).extend(sent)

    def _send_cancels(self) -> None:
        for (job_id, stop), indices in self._cancels.items():
            loop.send(self.sock, wire.CancelTasks(job_id, indices, stop))
        self._cancels.clear()

    def _on_leader(self, record: LeaderRecord) -> None:
        if (record.endpoint, record.epoch) != (self.leader.endpoint, self.leader.epoch):
            log.info("new coordinator leader %s (epoch %d); resubmitting", record.endpoint, record.epoch)
            self.leader = record
            self._connect()
            self.refused = False
            self._resubmit_all()

    def _on_stop(self, _: None) -> None:
        self._stopping = True

    def _send_job(self, job: JobHandle) -> None:
        for bundle in job.bundles:
            if bundle.digest not in self._bundles_sent:
                loop.send(self.sock, wire.Bundle(bundle.digest, frames=(bundle.data,)))
                self._bundles_sent.add(bundle.digest)
        options = dict(job.options, window=job.window)
        loop.send(self.sock, wire.SubmitJob(job.job_id, job.digest, options, frames=(job.function,)))

    def _resubmit_all(self) -> None:
        for job in self.jobs.values():
            self._resubmit(job)

    def _resubmit(self, job: JobHandle) -> None:
        self._send_job(job)
        self._send_tasks(job, list(job.outstanding.items()))

    def _send_tasks(self, job: JobHandle, items: list[tuple[int, wire.Buffer]]) -> None:
        """In messages of at most BATCH tasks and about BATCH_BYTES."""
        for chunk in loop.batches(items, lambda item: len(item[1]), BATCH_BYTES, BATCH):
            loop.send(self.sock, wire.SubmitTasks(job.job_id, [i for i, _ in chunk], frames=tuple(a for _, a in chunk)))

    def _send_new(self) -> None:
        for job in self.jobs.values():
            if not job.accepted.is_set():
                continue
            new = job._take_new()
            for index, args in new:
                job.outstanding[index] = args
            self._send_tasks(job, new)

    def _read(self) -> None:
        for _ in range(1000):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            try:
                msg = wire.decode(frames)
            except wire.ProtocolError as exc:
                log.warning("dropping malformed message from the coordinator: %s", exc)
                continue
            handler = self._message_handlers.get(type(msg))
            if handler is None:
                log.warning("dropping an unexpected %s from the coordinator", type(msg).__name__)
                continue
            handler(msg)

    def _on_heartbeat(self, msg: wire.Heartbeat) -> None:
        if msg.agents >= 0:
            self.agents = msg.agents
        if self.refused:  # it answers heartbeats only while it leads: what it refused, it takes now
            self.refused = False
            log.info("coordinator %s leads now; resubmitting", self.leader.endpoint)
            self._bundles_sent.clear()  # it dropped what it refused
            self._resubmit_all()

    def _on_task_results(self, msg: wire.TaskResults) -> None:
        job = self.jobs.get(msg.job_id)
        if job is not None:
            job._results(msg.items, msg.frames, msg.started)

    def _on_task_output(self, msg: wire.TaskOutput) -> None:
        job = self.jobs.get(msg.job_id)
        if job is not None:
            job._output(msg.index, msg.stream, msg.frames[0])

    def _on_job_accepted(self, msg: wire.JobAccepted) -> None:
        job = self.jobs.get(msg.job_id)
        if job is not None and not job.accepted.is_set():
            # Nothing was submitted yet (open_job waits for this), so the
            # window can still be replaced by the coordinator's answer.
            job.window = msg.window
            job._room = Window(msg.window)
            job.workers = msg.workers
            job.max_payload = msg.max_payload
            job.accepted.set()

    def _on_job_failed(self, msg: wire.JobFailed) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return
        if msg.code == wire.JobFailure.LOAD_FAILED and job.accepted.is_set():
            self.jobs.pop(msg.job_id)  # the coordinator has ended it: nothing to resubmit
            job._cannot_load(LoadError.from_rows(msg.errors or [["", "LoadError", msg.reason, ""]]))
        elif msg.code == wire.JobFailure.UNKNOWN_JOB:
            self._resubmit(job)  # the coordinator restarted under the same address
        elif msg.code == wire.JobFailure.MISSING_BUNDLE and not job.bundles_resent:
            # It keeps a bundle only a while after its last job ended, and loses all when it
            # restarts under the same address: send them again, once.
            job.bundles_resent = True
            self._bundles_sent.difference_update(b.digest for b in job.bundles)
            self._resubmit(job)
        else:
            job.failure = f"the coordinator refused job {msg.job_id}: {msg.reason}"
            job.accepted.set()

    def _on_load_failed(self, msg: wire.LoadFailed) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return
        error = LoadError.from_rows([msg.row()])
        if job.on_refused is None:
            log.warning("job %s: %s; its tasks run on the other nodes", msg.job_id, error)
        else:
            job.on_refused(error)

    def _on_refused(self, msg: wire.Refused) -> None:
        if msg.code == wire.Refusal.PROTOCOL_VERSION:
            log.error("coordinator refused us: %s", msg.reason)
            for job in self.jobs.values():
                job.failure = f"the coordinator refused this client: {msg.reason}"
                job.accepted.set()
            return
        if not self.refused:
            log.warning("coordinator refused us: %s", msg.reason)
        self.refused = True  # it does not lead (yet): see _on_heartbeat


__all__ = ["ClusterClient", "ClusterUnavailable", "JobHandle", "ZooKeeperUnreachable"]
