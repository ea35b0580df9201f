"""The node agent: one poller loop that owns its sockets and carries out what the pure
parts decide.

Coordinators connect to ``front`` (a ROUTER bound on the advertised endpoint, whose
routing id is the node id); each worker has a channel (links.py). The decisions are
made elsewhere, without I/O: the session with the coordinators (session.py: the
leader, fencing, its liveness, heartbeats, results held for it), the local queue
policy (local_queue.py: jobs, queue depth, which worker gets which task, what goes
back), the worker processes' state machine (pool.py) and the tasks' limits
(limits.py). Each turn, in this order: events from other threads, coordinator
messages, worker messages, timers (reaping and restarting workers, limits,
heartbeats, drain), then assigning queued tasks to workers, giving back tasks beyond
the capacity, moving tasks off stuck workers and flushing results. Results stay held
while no coordinator is reachable, so a leader change loses nothing the agent ran.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import platform
import socket
import sysconfig
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil
import zmq

from cluster.contract import layout, payload, security, wire
from cluster.contract.config import AgentConfig
from cluster.contract.layout import AgentRecord
from cluster.contract.version import PROTOCOL_VERSION, __version__
from cluster.runtime import loop
from cluster.runtime.daemon import Harness
from cluster.runtime.zk import tidy

from . import limits
from .bundles import BundleCache, MissingBundle
from .export import export
from .links import WorkerLinks
from .local_queue import LocalQueue, QueuedTask
from .marker import Marker
from .pool import Slot
from .registration import Registration
from .resources import HostLoad, NodeResources, detect, parse_workers
from .session import CoordinatorSession, Doomed
from .starts import StartWatch
from .workspaces import Workspaces

if TYPE_CHECKING:
    from cluster.runtime.metrics import Metrics

log = logging.getLogger("agents.agent")

SHORT_TRACEBACK = 4096  # a traceback that does not load a function goes to the client up to this long


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.keys = security.for_daemon(cfg.keys, cfg.insecure, "agent")
        self.node_id = cfg.node_id or socket.gethostname()
        if cfg.relay:
            layout.check_name(cfg.relay, "relay id")
        self.resources = detect()
        self.host = HostLoad(self.resources.usable_cpus)
        self.workers = parse_workers(cfg.workers, self.resources.usable_cpus)
        self.counters: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()  # tasks finished here, by outcome
        self.queue = LocalQueue(self.workers, prefetch=cfg.prefetch, prefetch_short=cfg.prefetch_short)
        self.session = CoordinatorSession(
            self.node_id,
            self.workers,
            interval=cfg.heartbeat_interval,
            misses=cfg.heartbeat_misses,
            counters=self.counters,
        )
        self.harness = Harness()
        self.waker, self.notifier = self.harness.waker, self.harness.notifier
        self.drain_deadline = 0.0
        # Jobs whose function does not load here, reported to the leader, until its EndJob
        # says nothing more of them comes over this connection.
        self.refused: set[str] = set()
        self._stopping = False
        self.metrics: Metrics | None = None
        self.front_handlers: dict[type[wire.Message], Callable[[bytes, Any, float], None]] = {
            wire.Hello: self._on_hello,
            wire.Heartbeat: self.session.on_heartbeat,
            wire.Bundle: self._on_bundle,
            wire.ForgetBundles: self._on_forget_bundles,
            wire.JobSpec: self._on_job_spec,
            wire.Dispatch: self._on_dispatch,
            wire.EndJob: self._on_end_job,
            wire.DropTasks: self._on_drop_tasks,
        }
        self.back_handlers: dict[type[wire.Message], Callable[[Slot, Any], None]] = {
            wire.WorkerReady: self._on_ready,
            wire.TasksDone: self._on_tasks_done,
            wire.TaskOutput: self._on_task_output,
        }
        self.event_handlers: dict[str, Callable[[object], None]] = {"drain": self._on_drain}

    # ------------------------------------------------------------ lifecycle

    def drain(self) -> None:
        """Safe from a signal handler: finish what is held, then leave."""
        self.waker.post(("drain", None))

    def run(self, on_registered: Callable[[Agent], None] | None = None) -> int:
        with self.harness as h:
            self._start(h)
            if on_registered:
                on_registered(self)
            self._loop()
            self.registration.deregister()
            tidy(self.zk, self.zk.delete_async, self.drain_request)  # a spent request would drain our successor
            log.info("agent %s deregistered; counters %s", self.node_id, dict(self.counters))
        return 0

    def _start(self, h: Harness) -> None:
        cfg = self.cfg
        self.front = h.socket(zmq.ROUTER, max_payload=cfg.max_payload, routing_id=self.node_id.encode())
        # A coordinator's newest connection takes its routing id over from an older one still
        # closing: it reconnects after it dropped an agent that was at this endpoint, and without
        # handover that connection stays unidentified, its messages unread (docs/design.md).
        self.front.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.keys:
            security.serve(self.front, self.keys, "coordinators")
            h.authenticate({"coordinators": {self.keys.coordinator}})
        self.poller = zmq.Poller()
        self.workspaces = Workspaces(cfg.work_dir)
        h.on_close(self.workspaces.close)
        self.bundles = BundleCache(
            os.path.join(self.workspaces.root, "bundles"),
            max_bytes=cfg.bundle_cache_bytes,
            max_age=cfg.bundle_max_age,
            now=time.time(),
            counters=self.counters,
        )
        if not cfg.work_dir:
            h.on_close(self.bundles.close_all)  # before the workspaces: its directories are read-only
        self.bundle_failures: dict[str, str] = {}  # job -> why its bundles are not here
        markers = [Marker.create() for _ in range(self.workers)]
        for marker in markers:
            h.on_close(marker.close)
        self.links = WorkerLinks(
            self.poller,
            markers,
            workdir=self.workspaces.root,
            node_id=self.node_id,
            max_frame=cfg.max_payload + (1 << 20),
            backoff_max=cfg.restart_backoff_max,
            counters=self.counters,
        )
        self.pool = self.links.pool
        h.on_close(self.links.close_all)
        bound = loop.bind(self.front, cfg.bind)
        self.endpoint = loop.advertised(bound, cfg.advertise, cfg.zk)
        self.zk = zk = h.connect_zookeeper(cfg.zk, session_timeout=cfg.zk_session_timeout, auth_file=cfg.zk_auth)
        h.on_close(self.pool.stop)  # first: no worker outlives the agent
        self.registration = Registration(
            zk, cfg.cluster, _record(cfg, self.node_id, self.endpoint, self.workers, self.resources)
        )
        self.pool.converge(time.monotonic())
        self.registration.register()
        self.registration.keep()
        self.drain_request = layout.drain_path(cfg.cluster, self.node_id)
        zk.DataWatch(self.drain_request, self._on_drain_request)
        log.info(
            "agent %s registered: endpoint %s, %d workers (%d usable cpus)%s",
            self.node_id,
            self.endpoint,
            self.workers,
            self.resources.usable_cpus,
            f", reached through relay {cfg.relay}" if cfg.relay else "",
        )
        self.metrics = h.serve_metrics(cfg.metrics_port, cfg.bind)
        self.notifier.ready(f"registered as {self.node_id} at {self.endpoint} with {self.workers} workers")

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        poller, session, channels = self.poller, self.session, self.links.channels
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.waker.fd, zmq.POLLIN)
        tick = min(0.1, self.cfg.heartbeat_interval)
        self._next_tick = 0.0
        starts = StartWatch(self.pool)
        while not self._stopping:
            flush_at = session.flush_at
            wake = min(self._next_tick, starts.next, math.inf if flush_at is None else flush_at)
            ready = dict(poller.poll(loop.poll_ms(wake)))
            if self.waker.fd in ready:
                for kind, value in self.waker.drain():
                    handler = self.event_handlers.get(kind)
                    if handler is not None:
                        handler(value)
            if self.front in ready:
                loop.read_router(self.front, self._on_front, self._bad)
            if self.links.template_fd in ready:
                self.links.template_reports()
                self._next_tick = 0.0  # reap the workers that exited now
            news = False  # from a worker: its next task may have started
            for fd, events in ready.items():
                ch = channels.get(fd) if isinstance(fd, int) else None
                if ch is None:
                    continue
                news = True
                if events & zmq.POLLOUT:
                    self.links.writable(ch)
                if events & (zmq.POLLIN | zmq.POLLERR) and self.links.read(fd, self._on_back, self._bad):
                    self._next_tick = 0.0  # reap it now, not at the next tick
            now = time.monotonic()
            if now >= self._next_tick:
                self._next_tick = now + tick
                self._tick(now)
            if self.queue.tasks:
                self._assign()
                news = True
            found = starts.look(now, news)
            if found:
                session.started.extend(task.key for task in found)
            self._give_back()
            self._rebalance(now)
            self._flush(time.monotonic())

    def _tick(self, now: float) -> None:
        self.notifier.pet(now)
        if self.metrics is not None:
            export(self.metrics, self, now)
        self.pool.observe(now)
        self._sweep_bundles()
        for slot, seq, status, err in limits.breaches(self.pool.busy(), self.queue.jobs, now, _rss):
            self._charge(slot, seq, status, err)
        self._reap(now)
        self.pool.converge(now)
        beat = self.session.heartbeat(now, self.queue.free(self.pool.slots), self.host.sample(now))
        if beat is not None:
            loop.send(self.front, beat, self.session.leader)
        if self.session.draining:
            self._check_drain(now)

    def _bad(self, identity: bytes, why: str) -> None:
        self.counters["dropped_messages"] += 1
        if self.counters["dropped_messages"] <= 10:
            log.warning("dropping malformed message from %r: %s", identity[:64], why)

    # ---------------------------------------------------------------- drain

    def _on_drain_request(self, data: bytes | None, stat: object) -> bool | None:
        if data is not None:
            log.info("drain requested through ZooKeeper")
            self.waker.post(("drain", None))
            return False
        return None

    def _on_drain(self, _: object) -> None:
        if self.session.draining:
            return
        held = self._held()
        log.info("draining: finishing %d held tasks, taking no new work", held)
        self.drain_deadline = time.monotonic() + self.cfg.drain_timeout
        self.registration.set_state("draining")
        self.notifier.stopping(f"draining {held} held tasks")
        notice = self.session.drain()
        if notice is not None:
            loop.send(self.front, notice, self.session.leader)

    def _check_drain(self, now: float) -> None:
        held = self._held()
        if not held or now >= self.drain_deadline:
            if held:
                log.warning("drain timeout: handing %d tasks back", held)
            self._stopping = True

    def _held(self) -> int:
        """Tasks held: queued, on a worker, or finished with the result not sent."""
        return len(self.queue.tasks) + sum(len(s.tasks) for s in self.pool.slots) + len(self.session.outbox)

    # ---------------------------------------------------------- coordinator

    def _on_front(self, identity: bytes, msg: wire.Message) -> None:
        handler = self.front_handlers.get(type(msg))
        if handler is None:
            self.counters["dropped_messages"] += 1
            return
        now = time.monotonic()
        act, answer = self.session.admit(identity, msg, now)
        if answer is not None:
            loop.send(self.front, answer, identity)
        if act:
            handler(identity, msg, now)

    def _on_hello(self, identity: bytes, msg: wire.Hello, now: float) -> None:
        self.bundles.hello()
        self.refused.clear()  # a new connection: a job comes again with its JobSpec, and is tried again
        held = self.queue.held(self.pool.slots)
        loop.send(self.front, self.session.hello(identity, msg, now, self.queue.capacity, held), identity)

    def _on_job_spec(self, identity: bytes, msg: wire.JobSpec, now: float) -> None:
        # Its isolation domain: the job, unless its client names one for several of its jobs.
        shared = msg.options.get("isolation")
        domain = shared if isinstance(shared, str) and shared else msg.job_id
        options = dict(msg.options, isolation=domain, **self.workspaces.open(domain))
        options[wire.LOAD_FAILURES] = True  # its workers say when its function does not load
        self.refused.discard(msg.job_id)
        digests = msg.options.get("bundles")
        if digests:
            try:
                wire.check_digests(digests, "JobSpec.options.bundles")
                options["paths"] = self.bundles.open(msg.job_id, digests, options["workdir"], time.time())
                self.bundle_failures.pop(msg.job_id, None)  # they came since: sent again after a reconnection
            except (MissingBundle, wire.ProtocolError) as exc:
                log.warning("job %s cannot run here: %s", msg.job_id, exc)
                self.bundle_failures[msg.job_id] = str(exc)
        self.queue.add_job(msg, options, self.pool.slots, now)

    def _on_bundle(self, identity: bytes, msg: wire.Bundle, now: float) -> None:
        self.bundles.receive(msg.digest, msg.frames[0], time.time())

    def _on_forget_bundles(self, identity: bytes, msg: wire.ForgetBundles, now: float) -> None:
        self.bundles.forgotten(msg.digests)

    def _sweep_bundles(self) -> None:
        """Remove the bundles due to go; those the leader counts on, once it has forgotten them."""
        ask = self.bundles.sweep(time.time())
        leader = self.session.leader
        if (
            ask
            and leader is not None
            and loop.send(self.front, wire.ForgetBundles(self.session.max_epoch, ask), leader)
        ):
            self.bundles.asking(ask)

    def _on_dispatch(self, identity: bytes, msg: wire.Dispatch, now: float) -> None:
        if msg.job_id in self.refused:
            return  # sent before the leader heard why: it queues them again when it does
        failure = self.bundle_failures.get(msg.job_id)
        if failure is not None:
            err = payload.failure("BundleMissing", failure)
            self.session.outbox.extend(((msg.job_id, i, a), wire.ERROR, err) for i, a in msg.tasks)
            return
        if not self.queue.add_tasks(msg, self.pool.slots, now):
            self.session.no_function(msg)

    def _on_end_job(self, identity: bytes, msg: wire.EndJob, now: float) -> None:
        self.refused.discard(msg.job_id)
        self._end_job(msg.job_id, now)

    def _end_job(self, job_id: str, now: float, *, stop: bool = True) -> None:
        """Forget a job and its tasks; running ones are stopped, or with ``stop`` False finish
        (their results are dropped)."""
        self.bundles.close(job_id, time.time())
        self.bundle_failures.pop(job_id, None)
        domain = self.queue.end_job(job_id)
        if domain is None:
            return
        self._drop(lambda job, index: job == job_id, stop=stop)
        self.queue.retune(self.pool.slots, now)
        if domain not in self.queue.domains():  # its last job here: what it left ends with it
            for slot in self.pool.slots:
                if slot.domain == domain:
                    self.pool.retire(slot)
            self.workspaces.remove(domain)

    def _on_drop_tasks(self, identity: bytes, msg: wire.DropTasks, now: float) -> None:
        doomed = set(msg.indices)
        self._drop(lambda job_id, index: job_id == msg.job_id and index in doomed, stop=msg.stop)

    def _drop(self, doomed: Doomed, *, stop: bool = True) -> None:
        """Forget cancelled tasks, queued, running or finished: their client no longer
        waits. Running ones are stopped, or with ``stop`` False finish (their results are
        dropped by the leader)."""
        self.queue.drop(doomed)
        self.session.drop(doomed)
        self.links.cancel(doomed, stop=stop)

    def _give_back(self) -> None:
        session = self.session
        if session.leader is None:
            return
        back = self.queue.give_back(self.pool.slots, session.draining) if session.takes_back else ()
        msg = session.give_back(back, self.queue.capacity)
        if msg is None:
            return
        if loop.send(self.front, msg, session.leader):
            session.sent(msg)
            self.counters["tasks_returned"] += len(back)
        else:
            self.queue.tasks.extend(back)

    def _flush(self, now: float) -> None:
        session = self.session
        if not session.results_due(now, len(self.queue.tasks)):
            return
        self.queue.retune(self.pool.slots, now)
        capacity = self.queue.capacity
        while (msg := session.results(capacity)) is not None:
            if not loop.send(self.front, msg, session.leader):
                return  # they stay held until a coordinator is reachable
            session.sent(msg)

    # -------------------------------------------------------------- workers

    def _on_back(self, slot: Slot, msg: wire.Message) -> None:
        handler = self.back_handlers.get(type(msg))
        if handler is None:
            self.counters["dropped_messages"] += 1
        else:
            handler(slot, msg)

    def _on_ready(self, slot: Slot, msg: wire.WorkerReady) -> None:
        if msg.slot != slot.index or not self.pool.on_ready(msg.slot, msg.pid):
            self.counters["dropped_messages"] += 1

    def _on_tasks_done(self, slot: Slot, msg: wire.TasksDone) -> None:
        if not self.pool.is_live(slot):
            self.counters["dropped_messages"] += 1
            return
        now = time.monotonic()
        unloadable = self.queue.finished(self.pool, slot, msg, now, self.session.outbox, self.outcomes)
        if unloadable:
            self._cannot_load(unloadable, now)

    def _cannot_load(self, unloadable: list[tuple[QueuedTask, wire.Buffer]], now: float) -> None:
        """The workers could not load a job's function: the node's failing, not its tasks',
        so none of them counts as run or failed. The leader is told once per job, and the
        job leaves this node: the leader queues the tasks it sent here again, for other
        nodes. A leader of an earlier release gets each task's error, as it did."""
        session = self.session
        for task, body in unloadable:
            if not session.takes_load_failures:
                session.outbox.append((task.key, wire.ERROR, body))
                self.outcomes["error"] += 1
                continue
            if task.job_id in self.refused or task.job_id not in self.queue.jobs:
                continue  # told already (its other workers hit it too)
            self.refused.add(task.job_id)
            self.counters["jobs_refused"] += 1
            error = payload.load_error(body)
            message = error["message"].strip().splitlines()
            trace = error["traceback"] if len(error["traceback"]) <= SHORT_TRACEBACK else ""
            log.warning(
                "job %s cannot run here: its function does not load: %s: %s",
                task.job_id,
                error["type"],
                error["message"],
            )
            self._end_job(task.job_id, now, stop=False)
            if session.leader is not None:
                report = wire.LoadFailed(
                    task.job_id, self.node_id, error["type"], message[0] if message else "", trace, session.max_epoch
                )
                loop.send(self.front, report, session.leader)

    def _on_task_output(self, slot: Slot, msg: wire.TaskOutput) -> None:
        """Passed on at once, so it goes before the task's result, which the worker sent
        after it and the session holds a little. Without a leader that takes it, dropped."""
        session = self.session
        if not self.pool.is_live(slot) or session.leader is None or not session.takes_output:
            self.counters["dropped_output"] += 1
            return
        loop.send(self.front, msg, session.leader)

    def _reap(self, now: float) -> None:
        for ex in self.pool.reap(now):
            if ex.task is not None:
                log.warning("job %s task %d (attempt %d) lost its worker: %s", *ex.task.key, ex.reason)
                self.session.outbox.append((ex.task.key, wire.LOST, payload.lost_error(ex.reason)))
            # The worker never started these, or their results died with it: run them again, free.
            self.queue.tasks.extendleft(reversed(ex.requeue))

    def _charge(self, slot: Slot, seq: int, status: int, err: bytes) -> None:
        """Fail the task the worker is running and kill the worker; reaping requeues the rest."""
        self.session.outbox.append((slot.tasks[seq].key, status, err))
        self.pool.forget(slot, seq)
        self.pool.kill(slot)

    def _assign(self) -> None:
        assignment = self.queue.assign(self.pool.slots)
        for index, tasks in assignment.plan.items():
            unsent = self.links.run(self.pool.slots[index], tasks, self.queue.jobs, time.monotonic()) if tasks else ()
            if unsent:  # the worker is gone: they wait for another
                self.queue.tasks.extendleft(reversed(unsent))
        for slot in assignment.retire:  # restarted clean for the tasks of other jobs that wait
            self.pool.retire(slot)

    def _rebalance(self, now: float) -> None:
        """Move the unstarted tasks off stuck workers (LocalQueue.stuck), to idle ones. A
        moved task that its first worker starts anyway runs twice; only one result is kept."""
        stuck = self.queue.stuck(self.pool.slots, now)
        if not stuck:
            return
        moved = 0
        for slot in stuck:
            withdrawn = self.links.withdraw(slot, self.pool.unstarted(slot))
            self.queue.tasks.extend(withdrawn)
            moved += len(withdrawn)
        if moved:
            self.counters["tasks_moved"] += moved
            self._assign()


def _record(cfg: AgentConfig, node_id: str, endpoint: str, workers: int, resources: NodeResources) -> AgentRecord:
    return AgentRecord(
        node_id=node_id,
        host=socket.gethostname(),
        endpoint=endpoint,
        workers=workers,
        cores=resources.cores,
        memory=resources.memory,
        version=__version__,
        protocol=PROTOCOL_VERSION,
        pid=os.getpid(),
        started=psutil.Process().create_time(),
        labels=dict(cfg.labels),
        state="ready",
        relay=cfg.relay,
        python=platform.python_version(),  # its workers' too: the template is started with this interpreter
        platform=sysconfig.get_platform(),
    )


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
