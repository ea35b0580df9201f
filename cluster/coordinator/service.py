"""The coordinator process: one poller loop that owns every socket.

Each turn of the loop runs the same steps in the same order: events from other
threads (election, membership), client messages, agent messages, timers
(heartbeats, liveness, Hello retries, silent clients), dispatch, and result
delivery. Scheduling decisions live in ``scheduler.Scheduler``; this module
only moves bytes. It never unpickles user payloads.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from cluster.contract import payload, security, wire
from cluster.contract.config import CoordinatorConfig
from cluster.contract.layout import AgentRecord, LeaderRecord, RelayRecord
from cluster.contract.liveness import BeatInterval, Liveness
from cluster.contract.version import PROTOCOL_VERSION, __version__
from cluster.coordinator import election
from cluster.coordinator.rate import Throughput
from cluster.coordinator.relays import RelayTable, relay_identity
from cluster.coordinator.scheduler import Scheduler
from cluster.runtime import loop
from cluster.runtime.daemon import STOP, Harness
from cluster.runtime.membership import MemberEvent, Membership

if TYPE_CHECKING:
    from cluster.runtime.metrics import Metrics

log = logging.getLogger("cluster.coordinator")

HELLO_RETRY = 0.2
RATE_WINDOW = 60.0  # `clusterctl status` reports tasks/s over the last minute


@dataclass
class AgentPeer:
    node_id: str
    endpoint: str
    identity: bytes
    up: bool = False
    next_hello: float = 0.0
    started: float = 0.0  # its process's start (AgentRecord), to tell which of two at one endpoint is live
    via: str = ""  # the relay it is reached through; "" when connected to directly
    route: loop.Route = b""
    written_off: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # by cause

    def __post_init__(self) -> None:
        self.route = (relay_identity(self.via), self.identity) if self.via else self.identity


class Coordinator:
    def __init__(self, cfg: CoordinatorConfig, *, on_ready: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.keys = security.for_daemon(cfg.keys, cfg.insecure, "coordinator")
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.on_ready = on_ready
        self.epoch = 0
        self.leading = False
        self.scheduler = Scheduler(max_batch=cfg.max_batch)
        self.scheduler.clock = time.monotonic
        self.throughput = Throughput(RATE_WINDOW)
        self.peers: dict[str, AgentPeer] = {}
        self._at: dict[str, str] = {}  # endpoint -> the node id connected there
        self.relays = RelayTable()
        self.agent_liveness = Liveness(cfg.heartbeat_interval, cfg.heartbeat_misses)
        self.beats = BeatInterval(cfg.heartbeat_interval, cfg.heartbeat_budget, cfg.heartbeat_misses)
        self.counters: collections.Counter = collections.Counter()
        self.written_off: collections.Counter = collections.Counter()  # agents assumed lost, by cause
        self.harness = Harness()
        self.waker, self.notifier = self.harness.waker, self.harness.notifier
        self._stopping = False
        self._first_dispatch = False
        self._next_beat = 0.0  # heartbeats go every beats.interval, not every (shorter) timer tick
        self.metrics: Metrics | None = None
        self._warned_bad: set[bytes] = set()
        self.client_handlers = {
            wire.SubmitJob: self._on_submit_job,
            wire.SubmitTasks: self._on_submit_tasks,
            wire.CancelJob: self._on_cancel_job,
            wire.CancelTasks: self._on_cancel_tasks,
            wire.Heartbeat: self._on_client_heartbeat,
            wire.StatusRequest: self._on_status,
        }
        self.agent_handlers = {
            wire.Welcome: self._on_welcome,
            wire.Results: self._on_results,
            wire.ReturnTasks: self._on_return_tasks,
            wire.Heartbeat: self._on_agent_heartbeat,
            wire.Draining: self._on_draining,
            wire.Refused: self._on_agent_refused,
        }

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Safe from any thread or a signal handler."""
        self._stopping = True
        self.harness.stop()

    def run(self) -> int:
        with self.harness as h:
            self._start(h)
            self._loop()
        return 0

    def _start(self, h: Harness) -> None:
        cfg = self.cfg
        self.clients = h.socket(zmq.ROUTER, max_payload=cfg.max_payload)
        self.agents = h.socket(zmq.ROUTER, max_payload=cfg.max_payload, routing_id=self.id.encode())
        self.agents.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.closed = h.watch_disconnects(self.agents)
        if self.keys:
            security.serve(self.clients, self.keys, "clients")
            security.connect_to(self.agents, self.keys, self.keys.agent)
            h.authenticate({"clients": set(self.keys.clients)})
        bound = loop.bind(self.clients, cfg.bind)
        self.endpoint = loop.advertised(bound, cfg.advertise, cfg.zk)
        self.zk = zk = h.connect_zookeeper(cfg.zk, session_timeout=cfg.zk_session_timeout, auth_file=cfg.zk_auth)
        self.membership = Membership(zk, self.cfg.cluster, lambda ev: self.waker.post(("member", ev)))
        self.relay_membership = Membership(zk, self.cfg.cluster, lambda ev: self.waker.post(("relay", ev)), RelayRecord)
        self.election = election.LeaderElection(
            zk,
            self.cfg.cluster,
            self.id,
            self._leader_record,
            lambda kind, epoch: self.waker.post((kind, epoch)),
            prepare=self._watch_members,
        )
        h.on_close(self.membership.stop)
        h.on_close(self.relay_membership.stop)
        h.on_close(self.election.stop)  # first: no new lead while the rest stops
        self.metrics = h.serve_metrics(cfg.metrics_port, cfg.bind)
        if self.metrics is not None:
            self.scheduler.latencies = []
        log.info("coordinator %s: client endpoint %s; standing for election", self.id, self.endpoint)
        self.election.start()
        self.notifier.ready(f"standing by for election; client endpoint {self.endpoint}")

    def _export(self, now: float) -> None:
        m, s = self.metrics, self.scheduler
        m.gauge("leader", "1 while this coordinator leads", 1.0 if self.leading else 0.0)
        m.gauge("epoch", "Epoch of this coordinator's lead", self.epoch)
        m.gauge("zookeeper_connected", "1 while the ZooKeeper session is connected", 1.0 if self.zk.connected else 0.0)
        m.gauge("agents", "Agents connected", sum(1 for p in self.peers.values() if p.up))
        m.gauge("workers", "Workers on connected agents", sum(a.workers for a in s.agents.values()))
        m.gauge("queue_depth", "Tasks waiting for an agent", s.queued)
        m.gauge("tasks_running", "Tasks held by agents", sum(len(a.in_flight) for a in s.agents.values()))
        m.gauge("jobs", "Open jobs", len(s.jobs))
        m.gauge(
            "heartbeat_interval_seconds",
            "Seconds between heartbeats, both ways (stretched with the fleet)",
            self.beats.interval,
        )
        for node_id in s.agents:
            age = self.agent_liveness.age(node_id, now)
            if age is not None:
                m.gauge("agent_heartbeat_age_seconds", "Seconds since an agent was last heard", age, node=node_id)
        m.counters("tasks_total", "Tasks delivered to clients, by outcome", s.outcomes, "outcome")
        m.total("dropped_messages_total", "Malformed or unexpected messages dropped", self.counters["dropped_messages"])
        m.counters(
            "agents_written_off_total",
            "Agents assumed lost while still registered, by what told: their "
            "connection closed, they fell silent, or a dispatch to them could not be sent",
            self.written_off,
            "cause",
        )
        samples, s.latencies = s.latencies or [], []
        m.observe(
            "dispatch_latency_seconds", "Time a task waited in the queue before dispatch", (wait for wait, _ in samples)
        )
        m.observe(
            "task_round_trip_seconds",
            "Time from dispatch to the task's result (includes its run time)",
            (rtt for _, rtt in samples),
        )
        m.counters(
            "scheduler_events_total",
            "Retries, duplicate and stale results, adopted orphans",
            {k: v for k, v in s.counters.items() if k != "delivered"},
            "event",
        )

    def _watch_members(self) -> None:
        """Called by the election thread once elected, before the leader znode is published."""
        self.relay_membership.start()
        self.membership.start()

    def _leader_record(self, epoch: int) -> LeaderRecord:
        return LeaderRecord(
            coordinator_id=self.id,
            endpoint=self.endpoint,
            epoch=epoch,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            protocol=PROTOCOL_VERSION,
            started=time.time(),
            curve_key=self.keys.public.decode() if self.keys else "",
        )

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.agents, zmq.POLLIN)
        poller.register(self.closed, zmq.POLLIN)
        poller.register(self.waker.fd, zmq.POLLIN)
        next_tick = 0.0
        while not self._stopping:
            ready = dict(poller.poll(loop.poll_ms(next_tick)))
            # Sockets first: polling a ROUTER reads a message's first frame ahead, and a
            # disconnect (an agent that left) before the rest is read aborts libzmq
            # (`!_more`, fq.cpp). Between whole messages, disconnecting is safe.
            if self.clients in ready:
                loop.read_router(self.clients, self._on_client_message, self._bad)
            # What a closed connection delivered before it closed is in the socket by now
            # (its reader passed it on first): read it, then write the peer off.
            if self.agents in ready or self.closed in ready:
                loop.read_router(self.agents, self._on_agent_message, self._bad, relays=self.relays.ids)
            if self.closed in ready:
                self._on_closed(loop.disconnected(self.closed))
            if self.waker.fd in ready:
                for kind, value in self.waker.drain():
                    self._on_event(kind, value)
            now = time.monotonic()
            if now >= next_tick:
                self.notifier.pet(now)
                self._timers(now)
                next_tick = now + min(self.cfg.heartbeat_interval, HELLO_RETRY)
            if self.leading:
                self._dispatch()
                self._deliver()

    def _bad(self, identity: bytes, why: str) -> None:
        self.counters["dropped_messages"] += 1
        if identity not in self._warned_bad and len(self._warned_bad) < 10_000:
            self._warned_bad.add(identity)
            log.warning("dropping malformed message from %r: %s", identity[:64], why)

    # --------------------------------------------------------------- events

    def _on_event(self, kind: str, value: object) -> None:
        if kind == STOP:
            self._stopping = True
            self.notifier.stopping("stopping")
        elif kind == election.ELECTED:
            self.epoch, self.leading = int(value), True
            self._first_dispatch = True
            self.notifier.status(f"leader with epoch {self.epoch}; client endpoint {self.endpoint}")
            for relay_id, relay in self.relay_membership.snapshot().items():
                self._on_relay(MemberEvent("joined", relay_id, relay))
            for node_id, record in self.membership.snapshot().items():
                self._on_member(MemberEvent("joined", node_id, record))
            self.election.took_lead(self.epoch)  # clients may find us now
            if self.on_ready:
                self.on_ready(self.endpoint)
        elif kind == election.DEPOSED:
            self._step_down()
        elif kind == "member" and self.leading:
            self._on_member(value)  # type: ignore[arg-type]
        elif kind == "relay" and self.leading:
            self._on_relay(value)  # type: ignore[arg-type]

    def _step_down(self) -> None:
        # A newer leader owns the cluster now; our jobs are resubmitted to it by their clients.
        self.leading = False
        for node_id in list(self.peers):
            self._drop_peer(node_id)
        for relay_id in list(self.relays.records):
            self._drop_relay(relay_id)
        for job_id in list(self.scheduler.jobs):
            self.scheduler.end_job(job_id)

    def _on_member(self, ev: MemberEvent) -> None:
        peer = self.peers.get(ev.node_id)
        record = ev.record
        moved = (
            record is not None
            and peer is not None
            and (peer.endpoint != record.endpoint or peer.via != self.relays.via(record))
        )
        if ev.kind == "left" or moved:
            if peer is not None:
                log.info("agent %s %s", ev.node_id, "left" if ev.kind == "left" else "moved")
                self._drop_peer(ev.node_id)
            if ev.kind == "left":
                return
        assert record is not None
        if ev.node_id not in self.peers:
            via = self.relays.via(record)
            if not via and not self._claim_endpoint(ev.node_id, record):
                return
            log.info(
                "agent %s joined at %s (%d workers)%s",
                ev.node_id,
                record.endpoint,
                record.workers,
                f" behind relay {via}" if via else "",
            )
            peer = AgentPeer(ev.node_id, record.endpoint, ev.node_id.encode(), started=record.started, via=via)
            self.peers[ev.node_id] = peer
            if via:
                self._tell_relay(via, connect=[peer])
            else:
                self._at[record.endpoint] = ev.node_id
                self.agents.connect(record.endpoint)
        if record.state == "draining":
            self.scheduler.agent_draining(ev.node_id)

    def _on_relay(self, ev: MemberEvent) -> None:
        """A relay joined, left or moved: connect to it (or stop), and move the agents that
        name it. A moved agent is dropped and joined again, so its unfinished tasks are
        queued again (each result is still delivered once)."""
        old = self.relays.records.get(ev.node_id)
        if old is not None and (ev.kind == "left" or old != ev.record):
            self._drop_relay(ev.node_id)
        if ev.kind != "left" and ev.node_id not in self.relays.records:
            record: RelayRecord = ev.record  # type: ignore[assignment]
            log.info("relay %s joined at %s", ev.node_id, record.endpoint)
            self.relays.add(record, time.monotonic())
            self.agents.connect(record.endpoint)
        self._reroute(ev.node_id)

    def _tell_relay(
        self, relay_id: str, connect: Iterable[AgentPeer] = (), disconnect: Iterable[AgentPeer] = ()
    ) -> None:
        """Which agents the relay connects to: the agents whose znodes name it, which we
        watch anyway (relays add no ZooKeeper load). Repeated with each Hello to an agent
        that has not answered, so a message lost before the relay was connected costs a retry."""
        loop.send(
            self.agents,
            wire.RelayAgents(
                self.epoch, [[p.node_id, p.endpoint] for p in connect], [[p.node_id, p.endpoint] for p in disconnect]
            ),
            (relay_identity(relay_id), b""),
        )

    def _reroute(self, relay_id: str) -> None:
        for node_id, agent in self.membership.snapshot().items():
            if agent.relay == relay_id:
                self._on_member(MemberEvent("changed", node_id, agent))

    def _check_relays(self, now: float) -> None:
        """A relay answers each of our heartbeats itself. One silent for a liveness deadline
        while still registered (cut off from us while its ZooKeeper session lives, or hung
        under a long session timeout) is bypassed: its agents are reached directly. They
        move back once it answers again."""
        for relay_id in self.relays.turned(now, self.agent_liveness.deadline):
            if self.relays.bypassed(relay_id):
                log.warning(
                    "relay %s silent for %.1f s; reaching its agents directly",
                    relay_id,
                    self.relays.silence(relay_id, now),
                )
            else:
                log.info("relay %s answers again; reaching its agents through it", relay_id)
            self._reroute(relay_id)

    def _drop_relay(self, relay_id: str) -> None:
        record = self.relays.remove(relay_id)
        log.info("relay %s left", relay_id)
        try:
            self.agents.disconnect(record.endpoint)
        except zmq.ZMQError:
            pass

    def _claim_endpoint(self, node_id: str, record: AgentRecord) -> bool:
        """Whether an agent may be connected to at its endpoint. A node replaced within the
        ZooKeeper session timeout (a rebooted machine, a pod given the old pod's address)
        brings a new agent up where the dead one's znode still stands. Both cannot be
        live, so the one started later is, and the other is dropped now: dropping it when
        its znode goes would disconnect the endpoint, the new agent's connection with it."""
        other = self.peers.get(self._at.get(record.endpoint, ""))
        if other is None or other.node_id == node_id:
            return True
        if record.started < other.started:
            log.warning(
                "ignoring agent %s at %s: agent %s, started later, is there now",
                node_id,
                record.endpoint,
                other.node_id,
            )
            return False
        log.warning(
            "agent %s is at %s, where agent %s was: taking %s as gone",
            node_id,
            record.endpoint,
            other.node_id,
            other.node_id,
        )
        self._drop_peer(other.node_id)
        return True

    def _on_closed(self, endpoints: list[str]) -> None:
        """Connections to agents or relays that closed: the process at the other end died
        or closed them (a crashed process's kernel closes its sockets at once). Written off
        now, not a liveness deadline later. A hung process or a cut cable closes nothing:
        heartbeats find those. One that is still alive answers the next Hello, or the
        next heartbeat for a relay, and is taken back."""
        if not self.leading:
            return
        for endpoint in endpoints:
            node_id = self._at.get(endpoint)
            if node_id is not None:
                self._write_off(node_id, "connection closed", "closed", warn_if_idle=False)
            relay_id = self.relays.at(endpoint)
            if relay_id and not self.relays.bypassed(relay_id):
                log.warning("relay %s: connection closed; reaching its agents directly", relay_id)
                self.relays.closed(relay_id)
                self._reroute(relay_id)

    def _write_off(self, node_id: str, why: str, cause: str, warn_if_idle: bool = True) -> None:
        """Assume an agent lost while it is still registered: requeue what it holds, and keep
        saying Hello, which it answers if it is alive after all. (An agent that drained and
        exited closes its connection too, holding nothing: no warning for that.)"""
        peer = self.peers.get(node_id)
        if peer is None or not peer.up:
            return
        requeued = self.scheduler.agent_down(node_id)
        log.log(
            logging.WARNING if requeued or warn_if_idle else logging.INFO,
            "agent %s %s: %d tasks requeued",
            node_id,
            why,
            requeued,
        )
        self.written_off[cause] += 1
        peer.written_off[cause] += 1
        peer.up = False
        self.agent_liveness.forget(node_id)

    def _drop_peer(self, node_id: str) -> None:
        peer = self.peers.pop(node_id, None)
        if peer is None:
            return
        requeued = self.scheduler.agent_down(node_id)
        if requeued:
            log.warning("agent %s lost: %d tasks requeued", node_id, requeued)
        self.agent_liveness.forget(node_id)
        if peer.via in self.relays.records:
            self._tell_relay(peer.via, disconnect=[peer])
        if self._at.get(peer.endpoint) == node_id:
            del self._at[peer.endpoint]
            try:
                self.agents.disconnect(peer.endpoint)
            except zmq.ZMQError:
                pass

    # --------------------------------------------------------------- timers

    def _timers(self, now: float) -> None:
        self.throughput.sample(now, self.scheduler.counters["delivered"])
        if self.metrics is not None:
            self._export(now)
        if not self.leading:
            return
        # The budget counts every agent, also those behind relays (whose heartbeats stop at
        # their relay): it bounds the fleet's heartbeat traffic, not only ours. Counting only
        # relays kept 0.5 s at 5,000 agents (detection 2.7 s instead of 6.0) but took the
        # one-machine benchmark's fleet to 2.5x the heartbeats (docs/performance.md).
        if self.beats.update(len(self.peers), now):
            log.info(
                "heartbeats every %.2f s for %d agents; one unheard for %.1f s is lost",
                self.beats.interval,
                len(self.peers),
                self.beats.interval * self.cfg.heartbeat_misses,
            )
        self.agent_liveness.deadline = self.beats.deadline(now)
        self._check_relays(now)
        for node_id in self.agent_liveness.expired(now):
            self._write_off(node_id, f"silent for {self.agent_liveness.deadline:.1f} s", "silent")
        # Each beat tells the agents the interval, so they follow it when it changes.
        beat = wire.Heartbeat(self.id, self.epoch, 0, self.beats.interval).encode()  # once for every agent
        hello = wire.Hello(self.id, self.epoch, self.beats.interval, takes_back=True)
        beating = now >= self._next_beat
        if beating:
            self._next_beat = max(self._next_beat + self.beats.interval, now)
            for relay_id in self.relays.records:  # a relay answers for itself: see _check_relays
                loop.send_frames(self.agents, beat, (relay_identity(relay_id), b""))
        due = []
        for peer in self.peers.values():
            if peer.up:
                if beating and not peer.via:  # a relay passes its own heartbeat on
                    loop.send_frames(self.agents, beat, peer.route)
            elif now >= peer.next_hello:
                due.append(peer)
        relayed: dict[str, list[AgentPeer]] = collections.defaultdict(list)
        for peer in due:
            if peer.via:
                relayed[peer.via].append(peer)
        for relay_id, peers in relayed.items():  # a relay connects to an agent before it can pass a Hello on
            self._tell_relay(relay_id, connect=peers)
        for peer in due:
            loop.send(self.agents, hello, peer.route)
            peer.next_hello = now + HELLO_RETRY
        cutoff = now - self.cfg.client_timeout
        for job in [j for j in self.scheduler.jobs.values() if j.last_seen < cutoff]:
            log.warning("job %s: client silent for %.0f s; cancelling it", job.job_id, self.cfg.client_timeout)
            self.counters["clients_timed_out"] += 1
            self._end_job(job.job_id)

    # ------------------------------------------------------------- clients

    def _on_client_message(self, identity: bytes, msg: wire.Message) -> None:
        handler = self.client_handlers.get(type(msg))
        if handler is None:
            self._bad(identity, f"unexpected {type(msg).__name__} on the client port")
            return
        if not self.leading and not isinstance(msg, wire.StatusRequest):
            loop.send(
                self.clients,
                wire.Refused("not the leader; look up the leader in ZooKeeper", wire.Refusal.NOT_LEADER),
                identity,
            )
            return
        handler(identity, msg)

    def _on_submit_job(self, identity: bytes, msg: wire.SubmitJob) -> None:
        limit = self.cfg.max_payload
        if len(msg.frames[0]) > limit:
            loop.send(
                self.clients,
                wire.JobFailed(
                    msg.job_id,
                    f"the function is {_mib(len(msg.frames[0]))}; the limit is {_mib(limit)}",
                    wire.JobFailure.TOO_LARGE,
                ),
                identity,
            )
            return
        options = dict(msg.options, max_payload=limit)  # workers check results against it
        job = self.scheduler.add_job(msg.job_id, identity, msg.frames[0], msg.digest, options, time.monotonic())
        asked = msg.options.get("window")
        job.window = min(self.cfg.job_window, asked) if isinstance(asked, int) and asked > 0 else self.cfg.job_window
        workers = sum(a.workers for a in self.scheduler.agents.values() if not a.draining)
        loop.send(self.clients, wire.JobAccepted(job.job_id, job.window, workers, self.epoch, limit), identity)

    def _on_submit_tasks(self, identity: bytes, msg: wire.SubmitTasks) -> None:
        job = self.scheduler.jobs.get(msg.job_id)
        if job is None:
            loop.send(
                self.clients,
                wire.JobFailed(msg.job_id, "unknown job (the coordinator changed?)", wire.JobFailure.UNKNOWN_JOB),
                identity,
            )
            return
        if len(job.tasks) + len(msg.indices) > job.window:
            self._bad(identity, f"job {msg.job_id} exceeds its window of {job.window} tasks")
            loop.send(
                self.clients, wire.JobFailed(msg.job_id, "window exceeded", wire.JobFailure.WINDOW_EXCEEDED), identity
            )
            return
        job.client, job.last_seen = identity, time.monotonic()
        limit = self.cfg.max_payload
        if any(len(f) > limit for f in msg.frames):  # only a client that skipped its own check
            fits = []
            for index, frame in zip(msg.indices, msg.frames):
                if len(frame) <= limit:
                    fits.append((index, frame))
                else:
                    job.outbox.append(
                        (
                            index,
                            wire.ERROR,
                            payload.failure(
                                "PayloadTooLarge", f"arguments are {_mib(len(frame))}; the limit is {_mib(limit)}"
                            ),
                        )
                    )
            self.scheduler.add_tasks(job, [i for i, _ in fits], tuple(f for _, f in fits))
            return
        self.scheduler.add_tasks(job, msg.indices, msg.frames)

    def _on_cancel_job(self, identity: bytes, msg: wire.CancelJob) -> None:
        self._end_job(msg.job_id)

    def _on_cancel_tasks(self, identity: bytes, msg: wire.CancelTasks) -> None:
        for node_id, indices in self.scheduler.cancel_tasks(msg.job_id, msg.indices).items():
            peer = self.peers.get(node_id)
            if peer is not None and peer.up:
                loop.send(self.agents, wire.DropTasks(self.epoch, msg.job_id, indices), peer.route)

    def _on_client_heartbeat(self, identity: bytes, msg: wire.Heartbeat) -> None:
        now = time.monotonic()
        for job in self.scheduler.jobs.values():
            if job.client == identity:
                job.last_seen = now
        loop.send(self.clients, wire.Heartbeat(self.id, self.epoch, agents=len(self.peers)), identity)

    def _on_status(self, identity: bytes, msg: wire.StatusRequest) -> None:
        loop.send(self.clients, wire.StatusReply(self.status()), identity)

    def status(self) -> dict:
        s, now = self.scheduler, time.monotonic()
        agents = {}
        for node_id, peer in self.peers.items():
            slot = s.agents.get(node_id)
            age = self.agent_liveness.age(node_id, now)
            if slot is None:  # registered in ZooKeeper but not answering (yet, or any more)
                agents[node_id] = {
                    "state": "unreachable",
                    "workers": 0,
                    "busy": 0,
                    "in_flight": 0,
                    "heartbeat_age": None if age is None else round(age, 3),
                }
            else:
                agents[node_id] = {
                    "state": "draining" if slot.draining else "ready",
                    "workers": slot.workers,
                    "busy": min(slot.workers, len(slot.in_flight)),
                    "in_flight": len(slot.in_flight),
                    "capacity": slot.capacity,
                    "heartbeat_age": round(age or 0.0, 3),
                }
            if peer.via:
                agents[node_id]["via"] = peer.via
            agents[node_id]["written_off"] = dict(peer.written_off)
        workers = sum(a["workers"] for a in agents.values())
        busy = sum(a["busy"] for a in agents.values())
        return {
            "coordinator": self.id,
            "epoch": self.epoch,
            "leading": self.leading,
            "endpoint": self.endpoint,
            "nodes": dict(collections.Counter(a["state"] for a in agents.values())),
            "workers": {"total": workers, "busy": busy, "idle": workers - busy},
            "agents": agents,
            "jobs": len(s.jobs),
            "queued": s.queued,
            "running": sum(a["in_flight"] for a in agents.values()),
            "delivered": s.counters["delivered"],
            "outcomes": dict(s.outcomes),
            "failed": sum(n for outcome, n in s.outcomes.items() if outcome != "ok"),
            "tasks_per_second": round(self.throughput.rate(now, s.counters["delivered"]), 1),
            "heartbeat_interval": self.beats.interval,
            "relays": {relay_id: r.endpoint for relay_id, r in self.relays.records.items()},
            "relays_bypassed": sorted(r for r in self.relays.records if self.relays.bypassed(r)),
            "counters": dict(self.counters + s.counters, rejected_keys=self._rejected_keys()),
            "written_off": dict(self.written_off),  # agents assumed lost while registered, by cause
        }

    def _rejected_keys(self) -> int:
        """Connection attempts refused for an unknown CURVE key (counted on the authenticator's thread)."""
        allow_list = self.harness.allow_list
        return sum(list(allow_list.rejected.values())) if allow_list else 0

    def _end_job(self, job_id: str) -> None:
        for node_id in self.scheduler.end_job(job_id):
            peer = self.peers.get(node_id)
            if peer is not None and peer.up:
                loop.send(self.agents, wire.EndJob(self.epoch, job_id), peer.route)

    # -------------------------------------------------------------- agents

    def _on_agent_message(self, route: loop.Route, msg: wire.Message) -> None:
        via = ""
        identity = route
        if isinstance(route, tuple):
            via, identity = self.relays.heard(route[0], time.monotonic()), route[1]
            if not identity:  # from the relay itself
                if isinstance(msg, wire.RelayBeat) and msg.epoch == self.epoch:
                    self._on_relay_beat(via, msg)
                return
        node_id = identity.decode(errors="replace")
        peer = self.peers.get(node_id)
        if peer is None or peer.via != via:  # unknown, or not on the route it is reached by
            if isinstance(msg, wire.Results):
                # A draining agent's last results can overtake its deregistration;
                # the scheduler still takes only the first result of each task.
                self._on_results(AgentPeer(node_id, "", identity), msg)
            else:
                self._bad(identity, "message from an agent that is not registered, or not behind this relay")
            return
        handler = self.agent_handlers.get(type(msg))
        if handler is None:
            self._bad(identity, f"unexpected {type(msg).__name__} on the agent channel")
            return
        handler(peer, msg)

    def _on_relay_beat(self, relay_id: str, msg: wire.RelayBeat) -> None:
        now = time.monotonic()
        for node_id in msg.agents:
            peer = self.peers.get(node_id)
            if peer is not None and peer.up and peer.via == relay_id:
                self.agent_liveness.beat(node_id, now)
        for node_id in msg.lost:
            peer = self.peers.get(node_id)
            if peer is not None and peer.via == relay_id:
                self._write_off(node_id, f"connection to relay {relay_id} closed", "closed", warn_if_idle=False)

    def _on_welcome(self, peer: AgentPeer, msg: wire.Welcome) -> None:
        if msg.epoch != self.epoch or msg.node_id != peer.node_id:
            return  # an answer to an older Hello of ours, or a confused agent
        if not peer.up:
            peer.up = True
            self.scheduler.agent_up(peer.node_id, msg.workers, msg.capacity, msg.held)
            if msg.draining:
                self.scheduler.agent_draining(peer.node_id)
            log.info(
                "agent %s connected: %d workers, capacity %d, holding %d",
                peer.node_id,
                msg.workers,
                msg.capacity,
                len(msg.held),
            )
        self.agent_liveness.beat(peer.node_id, time.monotonic())

    def _on_agent_heartbeat(self, peer: AgentPeer, msg: wire.Heartbeat) -> None:
        if peer.up:
            self.agent_liveness.beat(peer.node_id, time.monotonic())

    def _on_draining(self, peer: AgentPeer, msg: wire.Draining) -> None:
        self.scheduler.agent_draining(peer.node_id)

    def _on_agent_refused(self, peer: AgentPeer, msg: wire.Refused) -> None:
        log.warning("agent %s refused us: %s", peer.node_id, msg.reason)

    def _on_results(self, peer: AgentPeer, msg: wire.Results) -> None:
        if peer.up:
            self.agent_liveness.beat(peer.node_id, time.monotonic())
            self.scheduler.agent_capacity(peer.node_id, msg.capacity)
        for (job_id, index, attempt, status), frame in zip(msg.items, msg.frames):
            retried = self.scheduler.on_result(peer.node_id, job_id, index, attempt, status, frame)
            if retried is not None:
                log.warning(
                    "job %s task %d (attempt %d): its worker died on %s; %s",
                    job_id,
                    index,
                    attempt,
                    peer.node_id,
                    "retrying" if retried else "no retry",
                )

    def _on_return_tasks(self, peer: AgentPeer, msg: wire.ReturnTasks) -> None:
        if not peer.up:
            return  # written off: what it held is queued again already
        self.agent_liveness.beat(peer.node_id, time.monotonic())
        self.scheduler.agent_capacity(peer.node_id, msg.capacity)  # first, or they come straight back
        for job_id, index, attempt in reversed(msg.items):  # each goes to the front: keep their order
            self.scheduler.on_returned(peer.node_id, job_id, index, attempt)

    # ------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        failed: set[str] = set()
        for batch in self.scheduler.plan():
            if batch.node_id in failed:
                continue  # its tasks were requeued with the first failed send
            peer = self.peers[batch.node_id]
            job = batch.job
            if batch.send_spec:
                loop.send(
                    self.agents,
                    wire.JobSpec(self.epoch, job.job_id, job.digest, job.options, frames=(job.function,)),
                    peer.route,
                )
            if self._first_dispatch:
                self._first_dispatch = False
                log.info("first dispatch as leader (epoch %d)", self.epoch)
            tasks = [[index, attempt] for index, attempt, _ in batch.tasks]
            frames = tuple(args for _, _, args in batch.tasks)
            if not loop.send(self.agents, wire.Dispatch(self.epoch, job.job_id, tasks, frames=frames), peer.route):
                # Gone, or 100,000 messages behind: its tasks go elsewhere, and a Hello tells if it is alive.
                self._write_off(peer.node_id, "unreachable (a dispatch could not be sent)", "unreachable")
                failed.add(peer.node_id)

    def _deliver(self) -> None:
        size = self.cfg.max_batch
        for job in list(self.scheduler.outboxes()):
            while job.outbox:
                chunk = job.outbox[:size]
                msg = wire.TaskResults(job.job_id, [[i, s] for i, s, _ in chunk], frames=tuple(f for _, _, f in chunk))
                if not loop.send(self.clients, msg, job.client):
                    break  # client gone or slow: keep them; it reconnects or times out
                del job.outbox[:size]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
