"""The node agent: one poller loop that owns its sockets.

Coordinators connect to ``front`` (a ROUTER bound on the advertised endpoint,
whose routing id is the node id); each worker has a channel (channel.py, a
socketpair it inherits). Each turn: events from other threads,
coordinator messages, worker messages, timers (reaping and restarting workers,
heartbeats, leader liveness, drain), then assigning queued tasks to idle
workers and flushing results. Results wait in ``outbox`` while no coordinator
is reachable, so a leader change loses nothing the agent already ran.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
import zmq

from cluster.contract import layout, payload, security, wire
from cluster.contract.config import AgentConfig
from cluster.contract.layout import AgentRecord
from cluster.contract.liveness import Liveness
from cluster.contract.version import PROTOCOL_VERSION, __version__
from cluster.runtime import loop
from cluster.runtime.daemon import Harness
from cluster.runtime.zk import tidy

from .channel import Channel, Closed, pair
from .marker import Marker
from .pool import WorkerPool
from .registration import Registration
from .resources import detect, parse_workers

if TYPE_CHECKING:
    from cluster.runtime.metrics import Metrics

log = logging.getLogger("agents.agent")

MAX_RESULTS_PER_MESSAGE = 256
# Results are held back at most this long while the agent still has queued work, so a
# busy agent answers in batches; one that is about to run dry answers at once.
FLUSH_DELAY = 0.002
# A worker is handed several tasks at once only when its job's tasks are this short:
# then the message per task matters, and a slow task holds back few others.
PIPELINE_BELOW = 0.005
PIPELINE_SAMPLES = 3  # results seen before a job's tasks count as short
STEAL_AFTER = 2 * PIPELINE_BELOW  # a worker silent this long with tasks queued behind is stuck
MESSAGE_BYTES = 256 * 1024  # arguments per message to a worker, beyond its first task
LARGE_ARGS = 64 * 1024  # a job with arguments this large gets no deep queues (see JobInfo.deep)
NEW_JOB = 1.0  # seconds an untimed job with no task here still counts against deep queues


@dataclass(frozen=True)
class QueuedTask:
    job_id: str
    index: int
    attempt: int
    args: bytes

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job_id, self.index, self.attempt)


@dataclass
class JobInfo:
    digest: str
    options: dict
    function: bytes
    service: float = 0.0  # moving average of a task's time on a worker, seconds
    samples: int = 0
    large: bool = False  # a task of it carried LARGE_ARGS of arguments or more
    since: float = 0.0  # when its JobSpec came

    def note_service(self, seconds: float) -> None:
        self.service = seconds if not self.samples else 0.8 * self.service + 0.2 * seconds
        self.samples += 1

    @property
    def short(self) -> bool:
        return self.samples >= PIPELINE_SAMPLES and self.service < PIPELINE_BELOW

    @property
    def deep(self) -> bool:
        """Worth deep queues: short tasks whose arguments are small (deep queues of
        large ones would hold workers x prefetch_short of them in the agent's memory)."""
        return self.short and not self.large


class Agent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.keys = security.for_daemon(cfg.keys, cfg.insecure, "agent")
        self.node_id = cfg.node_id or socket.gethostname()
        if cfg.relay:
            layout.check_name(cfg.relay, "relay id")
        resources = detect()
        self.workers = parse_workers(cfg.workers, resources.usable_cpus)
        self.resources = resources
        self.depth = 1 + cfg.prefetch  # tasks one worker may hold when they are short (see _retune)
        self._announced = self.capacity  # the capacity the leader knows
        self._seq = itertools.count(1)
        self.harness = Harness()
        self.waker, self.notifier = self.harness.waker, self.harness.notifier
        self.jobs: dict[str, JobInfo] = {}
        self.queue: collections.deque[QueuedTask] = collections.deque()
        self.outbox: list[tuple[tuple[str, int, int], int, bytes]] = []
        self._flush_due: float | None = None  # when held results must go at the latest
        self.leader: bytes | None = None  # routing id of the coordinator we work for
        self.leader_takes_back = False  # it accepts ReturnTasks (its Hello says so)
        self.max_epoch = 0
        self.leader_liveness = Liveness(cfg.heartbeat_interval, cfg.heartbeat_misses)
        self.beat_interval = cfg.heartbeat_interval  # the leader's, once it says Hello: it is the judge
        self._next_beat = 0.0
        self.counters: collections.Counter = collections.Counter()
        self.outcomes: collections.Counter = collections.Counter()  # tasks finished here, by outcome
        self.draining = False
        self.drain_deadline = 0.0
        self._stopping = False
        self.metrics: Metrics | None = None
        self._fenced: set[tuple[bytes, int]] = set()
        self.front_handlers = {
            wire.Hello: self._on_hello,
            wire.Heartbeat: self._on_heartbeat,
            wire.JobSpec: self._on_job_spec,
            wire.Dispatch: self._on_dispatch,
            wire.EndJob: self._on_end_job,
            wire.DropTasks: self._on_drop_tasks,
        }

    @property
    def capacity(self) -> int:
        """Tasks this agent asks to hold."""
        return self.workers * self.depth

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
        if self.keys:
            security.serve(self.front, self.keys, "coordinators")
            h.authenticate({"coordinators": {self.keys.coordinator}})
        self.poller = zmq.Poller()
        self.channels: dict[int, Channel] = {}  # fd -> a worker's channel
        self.links: dict[int, Channel] = {}  # slot index -> the channel of its current process
        self.markers = markers = [Marker.create() for _ in range(self.workers)]
        h.on_close(lambda: [marker.close() for marker in markers])
        h.on_close(lambda: [self._close_channel(fd) for fd in list(self.channels)])
        self.pool = WorkerPool(self.workers, self._spawn, backoff_max=cfg.restart_backoff_max, markers=markers)
        bound = loop.bind(self.front, cfg.bind)
        self.endpoint = loop.advertised(bound, cfg.advertise, cfg.zk)
        self.zk = zk = h.connect_zookeeper(cfg.zk, session_timeout=cfg.zk_session_timeout, auth_file=cfg.zk_auth)
        h.on_close(self.pool.stop)  # first: no worker outlives the agent
        self.registration = Registration(zk, cfg.cluster, self._record())
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

    def _record(self) -> AgentRecord:
        return AgentRecord(
            node_id=self.node_id,
            host=socket.gethostname(),
            endpoint=self.endpoint,
            workers=self.workers,
            cores=self.resources.cores,
            memory=self.resources.memory,
            version=__version__,
            protocol=PROTOCOL_VERSION,
            pid=os.getpid(),
            started=_process_start(),
            labels=dict(self.cfg.labels),
            state="ready",
            relay=self.cfg.relay,
        )

    def _spawn(self, index: int) -> subprocess.Popen:
        old = self.links.pop(index, None)
        if old is not None and old.fileno() in self.channels:  # its previous process: nothing it still says counts
            self._close_channel(old.fileno())
        ours, theirs = pair()
        marker = self.markers[index].fd
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agents.worker",
                    f"fd:{theirs.fileno()}",
                    str(index),
                    str(os.getpid()),
                    f"fd:{marker}",
                ],
                stdin=subprocess.DEVNULL,
                close_fds=True,
                pass_fds=(theirs.fileno(), marker),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ch = Channel(ours, index, max_frame=self.cfg.max_payload + (1 << 20))
        self.channels[ch.fileno()] = self.links[index] = ch
        self.poller.register(ch.fileno(), zmq.POLLIN)
        return proc

    def _close_channel(self, fd: int) -> None:
        ch = self.channels.pop(fd)
        if self.links.get(ch.slot) is ch:
            del self.links[ch.slot]
        self.poller.unregister(fd)
        ch.close()

    def _read_channel(self, fd: int) -> None:
        ch = self.channels[fd]
        slot = self.pool.slots[ch.slot]
        try:
            messages = ch.receive()
        except Closed:
            messages = []
            self._next_tick = 0.0  # reap it now, not at the next tick
        for frames in messages:
            try:
                msg = wire.decode(frames)
            except wire.ProtocolError as exc:
                self._bad(b"worker %d" % ch.slot, str(exc))
                continue
            self._on_back(slot, msg)
        if ch.reader.corrupt is not None and slot.proc is not None and slot.proc.poll() is None:
            # The stream cannot be resynchronised. Killing the process without marking it
            # killed by us charges its death to the task it was running, as any crash is.
            log.warning("worker %d wrote a corrupt message (%s); killing it", ch.slot, ch.reader.corrupt)
            slot.proc.kill()
            ch.closed = True
            self._next_tick = 0.0
        if ch.closed:
            self._close_channel(fd)

    def _send_worker(self, slot, msg: wire.Message) -> bool:
        ch = self.links.get(slot.index)
        if ch is None or not ch.send(msg.encode()):
            return False
        self._poll_for_room(ch)
        return True

    def _poll_for_room(self, ch: Channel) -> None:
        """Have the poller wait for room to write exactly while the channel has bytes the
        worker could not take yet."""
        if bool(ch.pending) != ch.polled_for_room:
            ch.polled_for_room = bool(ch.pending)
            self.poller.register(ch.fileno(), zmq.POLLIN | zmq.POLLOUT if ch.pending else zmq.POLLIN)

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        poller = self.poller
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.waker.fd, zmq.POLLIN)
        tick = min(0.1, self.cfg.heartbeat_interval)
        self._next_tick = 0.0
        while not self._stopping:
            next_tick = self._next_tick
            wake = min(next_tick, self._flush_due) if self._flush_due is not None else next_tick
            ready = dict(poller.poll(loop.poll_ms(wake)))
            if self.waker.fd in ready:
                for kind, value in self.waker.drain():
                    self._on_event(kind, value)
            if self.front in ready:
                loop.read_router(self.front, self._on_front, self._bad)
            for fd, events in ready.items():
                ch = self.channels.get(fd) if isinstance(fd, int) else None
                if ch is None:
                    continue
                if events & zmq.POLLOUT:
                    ch.flush()
                    self._poll_for_room(ch)
                if events & (zmq.POLLIN | zmq.POLLERR):
                    self._read_channel(fd)
            now = time.monotonic()
            if now >= self._next_tick:
                self.notifier.pet(now)
                if self.metrics is not None:
                    self._export(now)
                self.pool.observe(now)
                self._enforce_limits(now)
                self._reap(now)
                self.pool.converge(now)
                self._next_tick = now + tick
                if now >= self._next_beat:
                    self._beat(now)
                    self._next_beat = now + self.beat_interval
                if self.draining:
                    self._check_drain(now)
            self._assign()
            self._give_back()
            self._rebalance(now)
            self._flush()

    def _bad(self, identity: bytes, why: str) -> None:
        self.counters["dropped_messages"] += 1
        if self.counters["dropped_messages"] <= 10:
            log.warning("dropping malformed message from %r: %s", identity[:64], why)

    # --------------------------------------------------------------- events

    def _on_event(self, kind: str, value: object) -> None:
        if kind == "drain" and not self.draining:
            log.info("draining: finishing %d held tasks, taking no new work", len(self._held()))
            self.draining = True
            self.drain_deadline = time.monotonic() + self.cfg.drain_timeout
            self.registration.set_state("draining")
            self.notifier.stopping(f"draining {len(self._held())} held tasks")
            if self.leader is not None:
                loop.send(self.front, wire.Draining(self.node_id), self.leader)

    def _check_drain(self, now: float) -> None:
        if not self._held() or now >= self.drain_deadline:
            if self._held():
                log.warning("drain timeout: handing %d tasks back", len(self._held()))
            self._stopping = True

    def _held(self) -> list[list]:
        keys = [list(t.key) for t in self.queue]
        keys += [list(t.key) for s in self.pool.slots for t in s.tasks.values()]
        keys += [list(key) for key, _, _ in self.outbox]
        return keys

    # ---------------------------------------------------------- coordinator

    def _on_front(self, identity: bytes, msg: wire.Message) -> None:
        handler = self.front_handlers.get(type(msg))
        if handler is None:
            self.counters["dropped_messages"] += 1
            return
        epoch = getattr(msg, "epoch", self.max_epoch)
        if epoch < self.max_epoch:
            # Fencing: a deposed coordinator must not keep feeding this node.
            self.counters["fenced_messages"] += 1
            if (identity, epoch) not in self._fenced:
                self._fenced.add((identity, epoch))
                log.warning("fenced: dropping messages of a deposed coordinator (epoch %d < %d)", epoch, self.max_epoch)
            if isinstance(msg, wire.Hello):
                loop.send(
                    self.front,
                    wire.Refused(f"epoch {epoch} is older than {self.max_epoch}", wire.Refusal.FENCED),
                    identity,
                )
            return
        if identity == self.leader:  # any message from the leader proves it alive, not only heartbeats
            self.leader_liveness.beat(identity, time.monotonic())
        handler(identity, msg)

    def _on_hello(self, identity: bytes, msg: wire.Hello) -> None:
        if msg.epoch > self.max_epoch or self.leader != identity:
            log.info("coordinator %s (epoch %d) is the leader", msg.coordinator_id, msg.epoch)
        self.max_epoch, self.leader = msg.epoch, identity
        self.leader_takes_back = msg.takes_back
        self.leader_liveness = Liveness(msg.heartbeat_interval, self.cfg.heartbeat_misses)
        self.leader_liveness.beat(identity, time.monotonic())
        self._follow_interval(msg.heartbeat_interval)
        self._announced = self.capacity
        welcome = wire.Welcome(self.node_id, msg.epoch, self.workers, self.capacity, self._held(), self.draining)
        loop.send(self.front, welcome, identity)

    def _on_heartbeat(self, identity: bytes, msg: wire.Heartbeat) -> None:
        # _on_front noted the leader's liveness
        if identity == self.leader and msg.interval:
            self.leader_liveness.set_interval(msg.interval)
            self._follow_interval(msg.interval)

    def _follow_interval(self, interval: float) -> None:
        """Beat as often as the leader asks: it stretches the interval for large fleets."""
        if interval != self.beat_interval:
            log.info("heartbeats every %.2f s, as the leader asks", interval)
        self.beat_interval = interval
        self._next_beat = min(self._next_beat, time.monotonic() + interval)

    def _on_job_spec(self, identity: bytes, msg: wire.JobSpec) -> None:
        self.jobs[msg.job_id] = JobInfo(msg.digest, msg.options, msg.frames[0], since=time.monotonic())
        self._retune()

    def _on_dispatch(self, identity: bytes, msg: wire.Dispatch) -> None:
        if msg.job_id not in self.jobs:
            # Should not happen (JobSpec precedes Dispatch on one connection); answer
            # each task so its credit and its retry are not lost.
            err = payload.lost_error("the agent had no function for this job")
            self.outbox.extend(((msg.job_id, i, a), wire.LOST, err) for i, a in msg.tasks)
            return
        job = self.jobs[msg.job_id]
        for (index, attempt), args in zip(msg.tasks, msg.frames):
            self.queue.append(QueuedTask(msg.job_id, index, attempt, args))
            job.large = job.large or len(args) >= LARGE_ARGS
        if not job.deep and self.depth > 1 + self.cfg.prefetch:
            # Long tasks back among short ones, or large arguments: shallow queues now, not at the next flush.
            self._retune()

    def _on_end_job(self, identity: bytes, msg: wire.EndJob) -> None:
        if self.jobs.pop(msg.job_id, None) is not None:
            self._drop(lambda job_id, index: job_id == msg.job_id)
            self._retune()

    def _retune(self) -> None:
        """Deeper queues while every job held has short tasks with small arguments: a
        message then carries several tasks on every hop. A job of longer (or not yet
        timed) tasks brings them back to ``prefetch``, so no slow task waits behind many
        others; so does one of large arguments, which the agent would hold too many of."""
        if len(self.jobs) == 1:
            deep = next(iter(self.jobs.values())).deep
        else:  # only jobs with tasks here count, and new ones whose tasks may be on their way
            # Runs at every flush: which jobs have tasks here is looked up only when some
            # job is not deep, and only for those.
            shallow = [job_id for job_id, job in self.jobs.items() if not job.deep]
            if shallow:
                held = {t.job_id for t in self.queue} | {t.job_id for s in self.pool.slots for t in s.tasks.values()}
                # A job kept open with a task or two run long ago (an Executor keeps idle jobs)
                # must not keep every other job's queues shallow for ever.
                fresh = time.monotonic() - NEW_JOB
                shallow = [
                    job_id
                    for job_id in shallow
                    if job_id in held
                    or self.jobs[job_id].samples < PIPELINE_SAMPLES
                    and self.jobs[job_id].since > fresh
                ]
            deep = bool(self.jobs) and not shallow
        prefetch = max(self.cfg.prefetch, self.cfg.prefetch_short) if deep else self.cfg.prefetch
        self.depth = 1 + prefetch

    def _on_drop_tasks(self, identity: bytes, msg: wire.DropTasks) -> None:
        doomed = set(msg.indices)
        self._drop(lambda job_id, index: job_id == msg.job_id and index in doomed)

    def _drop(self, doomed) -> None:
        """Forget cancelled tasks: queued ones vanish, running ones lose their worker now."""
        self.queue = collections.deque(t for t in self.queue if not doomed(t.job_id, t.index))
        self.outbox = [r for r in self.outbox if not doomed(r[0][0], r[0][1])]
        for slot in self.pool.busy():
            running = self.pool.running_seq(slot)
            doomed_seqs = [seq for seq, task in slot.tasks.items() if doomed(task.job_id, task.index)]
            if running in doomed_seqs or slot.killed:
                for seq in doomed_seqs:
                    self.pool.forget(slot, seq)
                self.pool.kill(slot)  # the others it held run again on another worker
            else:
                self._withdraw(slot, doomed_seqs)  # should one still start, its result is ignored

    def _enforce_limits(self, now: float) -> None:
        for slot in self.pool.busy():
            seq = slot.running
            task = slot.tasks.get(seq)
            job = self.jobs.get(task.job_id) if task is not None else None
            if job is None:
                continue
            timeout = job.options.get("timeout")
            if isinstance(timeout, (int, float)) and 0 < timeout < now - slot.task_started:
                err = payload.failure(
                    "TaskTimeout", f"task ran longer than its {timeout:g} s timeout; its worker was killed"
                )
                self._charge(slot, seq, wire.ERROR, err)
                continue
            limit = job.options.get("max_memory")
            if isinstance(limit, int) and limit > 0:
                rss = _rss(slot.proc.pid)
                if rss > limit:
                    err = payload.lost_error(
                        f"worker exceeded the task memory limit ({rss / 2**20:.0f} MiB > "
                        f"{limit / 2**20:.0f} MiB) and was killed"
                    )
                    self._charge(slot, seq, wire.LOST, err)

    def _charge(self, slot, seq: int, status: int, err: bytes) -> None:
        """Fail the task the worker is running and kill the worker; reaping requeues the rest."""
        self.outbox.append((slot.tasks[seq].key, status, err))
        self.pool.forget(slot, seq)
        self.pool.kill(slot)

    def _on_drain_request(self, data: bytes | None, stat: object) -> bool | None:
        if data is not None:
            log.info("drain requested through ZooKeeper")
            self.waker.post(("drain", None))
            return False
        return None

    # -------------------------------------------------------------- workers

    def _on_back(self, slot, msg: wire.Message) -> None:
        if isinstance(msg, wire.WorkerReady):
            if msg.slot != slot.index or not self.pool.on_ready(msg.slot, msg.pid):
                self.counters["dropped_messages"] += 1
            return
        if not isinstance(msg, wire.TasksDone) or not self.pool.is_live(slot):
            self.counters["dropped_messages"] += 1
            return
        now = time.monotonic()
        # Results that come back together share the time since the worker's last answer:
        # timing the first with all of it and the others with nothing would make a job
        # of 6 ms tasks look short every few batches.
        each = (now - slot.busy_since) / max(1, len(msg.items))
        again = []
        for (job_id, index, attempt, status), body in zip(msg.items, msg.frames):
            key = (job_id, index, attempt)
            task = self.pool.done(slot, key)
            if task is None:
                continue  # cancelled, or charged with a timeout, while it ran: already answered
            job = self.jobs.get(job_id)
            if job is not None:
                job.note_service(each)
            slot.busy_since = now
            if status == wire.NEED_FUNCTION:  # the worker evicted it: send it again
                slot.digests.clear()
                again.append(task)
                continue
            self.outbox.append((key, status, body))
            self.outcomes[wire.OUTCOMES.get(status, "other")] += 1
        self.queue.extendleft(reversed(again))

    def _reap(self, now: float) -> None:
        for ex in self.pool.reap(now):
            if ex.task is not None:
                log.warning("job %s task %d (attempt %d) lost its worker: %s", *ex.task.key, ex.reason)
                self.outbox.append((ex.task.key, wire.LOST, payload.lost_error(ex.reason)))
            # The worker never started these, or their results died with it: run them again, free.
            self.queue.extendleft(reversed(ex.requeue))

    def _assign(self) -> None:
        """Hand queued tasks to workers: one to each idle worker first; then, for jobs of
        short tasks, as many as fit (``depth``) to the least loaded worker, then the next,
        so that one message carries several tasks."""
        if not self.queue:
            return
        live = self.pool.live()
        plan: dict[int, list[QueuedTask]] = {}
        for slot in live:
            if not slot.tasks and self._next_job() is not None:
                plan[slot.index] = [self.queue.popleft()]
        for slot in sorted(live, key=lambda s: len(s.tasks) + len(plan.get(s.index, ()))):
            held = plan.setdefault(slot.index, [])
            while len(slot.tasks) + len(held) < self.depth and (job := self._next_job()) is not None and job.short:
                held.append(self.queue.popleft())
        for index, tasks in plan.items():
            if tasks:
                self._run(self.pool.slots[index], tasks)

    def _give_back(self) -> None:
        """When the agent's capacity shrinks (see _retune), tell the leader at once, and
        give back the queued tasks beyond it: they were sent on the deeper credit, and
        kept here they would wait behind each other while other agents have room (a job
        of long tasks sent to an agent that had just run short ones went 11 to 1). A
        draining agent gives back every task no worker has: another agent can start them
        now, and the drain ends when the tasks its workers hold are done."""
        if self.leader is None:
            return
        excess = 0
        if self.queue and self.leader_takes_back:
            if self.draining:
                excess = len(self.queue)
            else:
                assigned = sum(len(s.tasks) for s in self.pool.slots)
                excess = min(len(self.queue), len(self.queue) + assigned - self.capacity)
        if excess <= 0 and self.capacity >= self._announced:
            return
        back = [self.queue.pop() for _ in range(max(0, excess))][::-1]
        if back:
            msg: wire.Message = wire.ReturnTasks(self.max_epoch, [list(t.key) for t in back], self.capacity)
        else:  # a Results with no result carries a new capacity to coordinators of any release
            msg = wire.Results(self.max_epoch, [], self.capacity)
        if loop.send(self.front, msg, self.leader):
            self._announced = self.capacity
            self.counters["tasks_returned"] += len(back)
        else:
            self.queue.extend(back)

    def _rebalance(self, now: float) -> None:
        """Move tasks off a worker stuck on a long one while another worker has nothing:
        short tasks are pipelined on the strength of a guess, and a task much longer than
        its job's earlier ones must not hold up the tasks queued behind it. A moved task
        that its first worker starts anyway runs twice; only one result is kept."""
        if self.queue or not any(len(s.tasks) > 1 for s in self.pool.slots):
            return  # runs every loop turn: the common case costs one pass over the slots
        live = self.pool.live()
        if all(s.tasks for s in live):
            return
        moved = 0
        for slot in live:
            if len(slot.tasks) < 2 or now - slot.busy_since < STEAL_AFTER:
                continue
            withdrawn = self._withdraw(slot, self.pool.unstarted(slot))
            self.queue.extend(withdrawn)
            moved += len(withdrawn)
        if moved:
            self.counters["tasks_moved"] += moved
            self._assign()

    def _withdraw(self, slot, seqs: list[int]) -> list[QueuedTask]:
        """Take back tasks a worker holds and has not started: it is told to skip them."""
        if not seqs:
            return []
        self._send_worker(slot, wire.SkipTasks(seqs))
        tasks = [slot.tasks[seq] for seq in seqs]
        for seq in seqs:
            self.pool.forget(slot, seq)
        return tasks

    def _next_job(self) -> JobInfo | None:
        """The job of the first queued task, dropping tasks whose job has ended."""
        while self.queue:
            job = self.jobs.get(self.queue[0].job_id)
            if job is not None:
                return job
            self.queue.popleft()
        return None

    def _run(self, slot, tasks: list[QueuedTask]) -> None:
        """Send a worker its tasks: one RunTasks per run of tasks of the same job, up to
        MESSAGE_BYTES of arguments each. A worker starts on a message only once all of it
        has arrived, so large arguments go a few at a time, not sixteen megabytes at once."""
        now = time.monotonic()
        messages = list(_messages(tasks))
        for n, (job_id, group) in enumerate(messages):
            job = self.jobs[job_id]
            seqs = [next(self._seq) for _ in group]
            fn = b"" if job.digest in slot.digests else job.function
            msg = wire.RunTasks(
                job_id,
                job.digest,
                job.options,
                [[t.index, t.attempt, seq] for t, seq in zip(group, seqs)],
                frames=(fn, *(t.args for t in group)),
            )
            if not self._send_worker(slot, msg):  # the worker is gone: every task not sent waits for another
                self.queue.extendleft(reversed([t for _, rest in messages[n:] for t in rest]))
                return
            slot.digests.add(job.digest)
            self.counters["worker_messages"] += 1
            for seq, task in zip(seqs, group):
                self.pool.assign(slot, seq, task, now)

    def _flush(self) -> None:
        if not self.outbox or self.leader is None:
            self._flush_due = None  # nothing to send, or nobody to send it to: no early wake-ups
            return
        now = time.monotonic()
        if self._flush_due is None:
            self._flush_due = now + FLUSH_DELAY
        # Hold results only while workers have queued tasks to go on with; a drain,
        # a worker about to go idle or a full message sends them now.
        starving = len(self.queue) < self.workers or self.draining
        if not starving and len(self.outbox) < MAX_RESULTS_PER_MESSAGE and now < self._flush_due:
            return
        self._flush_due = None
        self._retune()
        while self.outbox:
            chunk = self.outbox[:MAX_RESULTS_PER_MESSAGE]
            items = [[job, index, attempt, status] for (job, index, attempt), status, _ in chunk]
            capacity = self.capacity if self.capacity != self._announced else 0
            msg = wire.Results(self.max_epoch, items, capacity, frames=tuple(body for _, _, body in chunk))
            if not loop.send(self.front, msg, self.leader):
                return  # keep them until a coordinator is reachable
            self._announced = self.capacity
            del self.outbox[:MAX_RESULTS_PER_MESSAGE]

    def _export(self, now: float) -> None:
        m = self.metrics
        states = collections.Counter(slot.state.value for slot in self.pool.slots)
        for state in ("starting", "idle", "busy", "backoff"):
            m.gauge("workers", "Worker processes by state", states.get(state, 0), state=state)
        m.gauge("queue_depth", "Tasks queued on this agent", len(self.queue))
        m.gauge("jobs", "Jobs whose function this agent holds", len(self.jobs))
        m.gauge("heartbeat_interval_seconds", "Seconds between heartbeats, as the leader asks", self.beat_interval)
        m.gauge("results_held", "Results waiting for a coordinator", len(self.outbox))
        m.gauge("draining", "1 while draining", 1.0 if self.draining else 0.0)
        m.gauge("zookeeper_connected", "1 while the ZooKeeper session is connected", 1.0 if self.zk.connected else 0.0)
        age = self.leader_liveness.age(self.leader, now) if self.leader else None
        m.gauge("leader_heartbeat_age_seconds", "Seconds since the leader was last heard", age if age else 0.0)
        m.counters("tasks_total", "Tasks finished on this agent, by outcome", self.outcomes, "outcome")
        m.total("dropped_messages_total", "Malformed or unexpected messages dropped", self.counters["dropped_messages"])
        m.total("fenced_messages_total", "Messages from deposed coordinators dropped", self.counters["fenced_messages"])
        m.total("worker_restarts_total", "Worker processes restarted", sum(s.restarts for s in self.pool.slots))
        m.total(
            "worker_messages_total",
            "Messages that carried tasks to workers (short tasks share one)",
            self.counters["worker_messages"],
        )
        m.total("tasks_moved_total", "Tasks moved off a worker stuck on a long task", self.counters["tasks_moved"])
        m.total(
            "tasks_returned_total",
            "Queued tasks given back to the leader when this agent's capacity shrank",
            self.counters["tasks_returned"],
        )

    def _beat(self, now: float) -> None:
        if self.leader is None:
            return
        if self.leader in self.leader_liveness.expired(now):
            log.warning("coordinator silent; holding %d results until a coordinator says Hello", len(self.outbox))
            self.leader = None
            return
        free = max(0, self.capacity - len(self.queue) - sum(len(s.tasks) for s in self.pool.slots))
        loop.send(self.front, wire.Heartbeat(self.node_id, self.max_epoch, free), self.leader)


def _messages(tasks: list[QueuedTask]):
    """(job id, tasks) runs of one job each, with at most MESSAGE_BYTES of arguments
    (or a single task)."""
    for job_id, group in itertools.groupby(tasks, key=lambda t: t.job_id):
        for run in loop.batches(group, lambda t: len(t.args), MESSAGE_BYTES):
            yield job_id, run


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _process_start() -> float:
    return psutil.Process().create_time()
