"""The coordinator process: one poller loop that owns every socket.

Each turn of the loop runs the same steps in the same order: client messages, agent
messages, closed connections, events from other threads (election, membership), timers,
dispatch and result delivery. The decisions are made elsewhere, by plain classes that take
``now``: the agent directory (``directory``) and what agents say (``agent_messages``), the
client front (``front``) and the scheduler. This loop hands them what arrives, by tables
from message type or event kind to handler, and executes the actions they return. It
never unpickles user payloads.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import zmq
from kazoo.client import KazooClient

from cluster.contract import security, wire
from cluster.contract.config import CoordinatorConfig
from cluster.contract.layout import LeaderRecord, RelayRecord
from cluster.contract.version import PROTOCOL_VERSION, __version__
from cluster.coordinator import election, report
from cluster.coordinator.actions import Action, Connect, Disconnect, ToAgents, ToClient
from cluster.coordinator.agent_messages import AgentMessages
from cluster.coordinator.directory import HELLO_RETRY, AgentDirectory, AgentPeer
from cluster.coordinator.front import ClientFront
from cluster.coordinator.scheduler import Job, Scheduler
from cluster.runtime import loop
from cluster.runtime.daemon import STOP, Harness
from cluster.runtime.membership import MemberEvent, Membership

log = logging.getLogger("cluster.coordinator")

ClientHandler = Callable[[bytes, Any, float], Iterable[Action]]
AgentHandler = Callable[[AgentPeer, Any, float], None]


class Coordinator:
    def __init__(self, cfg: CoordinatorConfig, *, on_ready: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.keys = security.for_daemon(cfg.keys, cfg.insecure, "coordinator")
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.on_ready = on_ready
        self.epoch = 0
        self.leading = False
        self.endpoint = ""
        self.counters: collections.Counter[str] = collections.Counter()  # dropped_messages
        self._warned_bad: set[bytes] = set()
        self.scheduler = Scheduler(max_batch=cfg.max_batch)
        self.scheduler.clock = time.monotonic
        self.directory = AgentDirectory(cfg, self.scheduler, self.id)
        self.agent_messages = AgentMessages(self.directory, self._bad)
        self.front = ClientFront(cfg, self.scheduler, self.directory, self.id, self._bad)
        self.harness = Harness()
        self.waker, self.notifier = self.harness.waker, self.harness.notifier
        self._stopping = False
        self._first_dispatch = False
        a, f = self.agent_messages, self.front
        self.client_handlers: dict[type[wire.Message], ClientHandler] = {
            wire.Bundle: f.on_bundle,
            wire.SubmitJob: f.on_submit_job,
            wire.SubmitTasks: f.on_submit_tasks,
            wire.CancelJob: f.on_cancel_job,
            wire.CancelTasks: f.on_cancel_tasks,
            wire.Heartbeat: f.on_heartbeat,
            wire.StatusRequest: self._on_status,
        }
        self.agent_handlers: dict[type[wire.Message], AgentHandler] = {
            wire.Welcome: a.on_welcome,
            wire.Results: a.on_results,
            wire.ReturnTasks: a.on_return_tasks,
            wire.Heartbeat: a.on_heartbeat,
            wire.Draining: a.on_draining,
            wire.Refused: a.on_refused,
            wire.ForgetBundles: self._on_forget_bundles,
            wire.TaskOutput: self._on_task_output,
            wire.LoadFailed: self._on_load_failed,
        }
        self.event_handlers: dict[str, Callable[[Any], None]] = {
            STOP: self._on_stop,
            election.ELECTED: self._on_elected,
            election.DEPOSED: self._on_deposed,
            "member": self._on_member,
            "relay": self._on_relay,
        }
        self.action_handlers: dict[type, Callable[[Any], None]] = {
            Connect: self._connect,
            Disconnect: self._disconnect,
            ToAgents: self._to_agents,
            ToClient: self._to_client,
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
        # Endpoints disconnected since the last timer tick, and connects to them put off to it.
        self._disconnected: set[str] = set()
        self._connect_later: list[str] = []
        self.closed = h.watch_disconnects(self.agents)
        if self.keys:
            security.serve(self.clients, self.keys, "clients")
            security.connect_to(self.agents, self.keys, self.keys.agent)
            h.authenticate({"clients": set(self.keys.clients)})
        bound = loop.bind(self.clients, cfg.bind)
        self.endpoint = loop.advertised(bound, cfg.advertise, cfg.zk)
        self.zk: KazooClient = h.connect_zookeeper(
            cfg.zk, session_timeout=cfg.zk_session_timeout, auth_file=cfg.zk_auth
        )
        self.membership = Membership(self.zk, cfg.cluster, lambda ev: self.waker.post(("member", ev)))
        self.relay_membership = Membership(self.zk, cfg.cluster, lambda ev: self.waker.post(("relay", ev)), RelayRecord)
        self.election = election.LeaderElection(
            self.zk,
            cfg.cluster,
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

    # What the report reads (report.Source).

    def rejected_keys(self) -> int:
        """Connection attempts refused for an unknown CURVE key (counted on the authenticator's thread)."""
        allow_list = self.harness.allow_list
        return sum(list(allow_list.rejected.values())) if allow_list else 0

    def zookeeper_connected(self) -> bool:
        return bool(self.zk.connected)

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.agents, zmq.POLLIN)
        poller.register(self.closed, zmq.POLLIN)
        poller.register(self.waker.fd, zmq.POLLIN)
        send_to_client = functools.partial(loop.send, self.clients)
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
                loop.read_router(self.agents, self._on_agent_message, self._bad, relays=self.directory.relays.ids)
            if self.closed in ready:
                endpoints = loop.disconnected(self.closed)
                if self.leading:
                    self._apply(self.directory.on_closed(endpoints))
            if self.waker.fd in ready:
                for kind, value in self.waker.drain():
                    self.event_handlers[kind](value)
            now = time.monotonic()
            if now >= next_tick:
                self.notifier.pet(now)
                self._timers(now)
                next_tick = now + min(self.cfg.heartbeat_interval, HELLO_RETRY)
            if self.leading:
                self._dispatch()
                self.front.deliver(send_to_client)

    def _timers(self, now: float) -> None:
        for endpoint in self._connect_later:
            self.agents.connect(endpoint)
        self._connect_later.clear()
        self._disconnected.clear()
        if self.metrics is not None:
            report.export(self.metrics, self, now)
        if self.leading:
            self._apply(self.directory.tick(now))
        self._apply(self.front.tick(now))  # samples the delivery rate; a standby has no jobs to time out

    def _apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            self.action_handlers[type(action)](action)

    def _connect(self, action: Connect) -> None:
        # An agent that took over a dead one's endpoint: connecting there again at once,
        # while libzmq still ends the old connection, can leave the new one silent both ways
        # until the agent is written off; so the connect waits for the next timer tick.
        if action.endpoint in self._disconnected:
            self._connect_later.append(action.endpoint)
        else:
            self.agents.connect(action.endpoint)

    def _disconnect(self, action: Disconnect) -> None:
        try:
            self.agents.disconnect(action.endpoint)
        except zmq.ZMQError:
            pass  # not connected there (any more)
        self._disconnected.add(action.endpoint)

    def _to_agents(self, action: ToAgents) -> None:
        for route in action.routes:
            loop.send_frames(self.agents, action.frames, route)

    def _to_client(self, action: ToClient) -> None:
        loop.send(self.clients, action.message, action.identity)

    def _bad(self, identity: bytes, why: str) -> None:
        self.counters["dropped_messages"] += 1
        if identity not in self._warned_bad and len(self._warned_bad) < 10_000:
            self._warned_bad.add(identity)
            log.warning("dropping malformed message from %r: %s", identity[:64], why)

    # --------------------------------------------------------------- events

    def _on_stop(self, value: object) -> None:
        self._stopping = True
        self.notifier.stopping("stopping")

    def _on_elected(self, epoch: int) -> None:
        self.epoch, self.leading = int(epoch), True
        self._first_dispatch = True
        self.notifier.status(f"leader with epoch {self.epoch}; client endpoint {self.endpoint}")
        relays, agents = self.relay_membership.snapshot(), self.membership.snapshot()
        self._apply(self.directory.elected(self.epoch, relays, agents, time.monotonic()))
        self.election.took_lead(self.epoch)  # clients may find us now
        if self.on_ready:
            self.on_ready(self.endpoint)

    def _on_deposed(self, epoch: int) -> None:
        self.leading = False
        self._apply(self.directory.step_down())
        self.front.step_down()

    def _on_member(self, ev: MemberEvent) -> None:
        if self.leading:
            self._apply(self.directory.on_member(ev))

    def _on_relay(self, ev: MemberEvent) -> None:
        if self.leading:
            self._apply(self.directory.on_relay(ev, time.monotonic()))

    # ------------------------------------------------------------ messages

    def _on_client_message(self, identity: bytes, msg: wire.Message) -> None:
        handler = self.client_handlers.get(type(msg))
        if handler is None:
            self._bad(identity, f"unexpected {type(msg).__name__} on the client port")
            return
        if not self.leading and not isinstance(msg, wire.StatusRequest):
            refused = wire.Refused("not the leader; look up the leader in ZooKeeper", wire.Refusal.NOT_LEADER)
            loop.send(self.clients, refused, identity)
            return
        self._apply(handler(identity, msg, time.monotonic()))

    def _on_status(self, identity: bytes, msg: wire.StatusRequest, now: float) -> list[Action]:
        return [ToClient(wire.StatusReply(report.status(self, now)), identity)]

    def _on_agent_message(self, route: loop.Route, msg: wire.Message) -> None:
        now = time.monotonic()
        peer = self.agent_messages.sender(route, msg, now)
        if peer is None:
            return
        handler = self.agent_handlers.get(type(msg))
        if handler is None:
            self._bad(peer.identity, f"unexpected {type(msg).__name__} on the agent channel")
            return
        handler(peer, msg, now)

    def _on_forget_bundles(self, peer: AgentPeer, msg: wire.ForgetBundles, now: float) -> None:
        """Forget that the agent has these bundles, and say so: it removes them then."""
        self.directory.forget_bundles(peer.node_id, msg.digests)
        loop.send(self.agents, wire.ForgetBundles(self.epoch, msg.digests), peer.route)

    def _on_task_output(self, peer: AgentPeer, msg: wire.TaskOutput, now: float) -> None:
        self._apply(self.front.on_task_output(peer.node_id, msg))

    def _on_load_failed(self, peer: AgentPeer, msg: wire.LoadFailed, now: float) -> None:
        self._apply(self.front.on_load_failed(peer.node_id, msg, now))

    def _send_bundles(self, node_id: str, job: Job, route: loop.Route) -> bool:
        """Send the job's bundles the agent was not sent over this connection (before its JobSpec)."""
        for digest in self.directory.unsent_bundles(node_id, job.options.get("bundles", ())):
            bundle = wire.Bundle(digest, self.epoch, frames=(self.front.bundles.get(digest),))
            if not loop.send(self.agents, bundle, route):
                return False
        return True

    def _dispatch(self) -> None:
        failed: set[str] = set()
        for batch in self.scheduler.plan():
            if batch.node_id in failed:
                continue  # its tasks were requeued with the first failed send
            route = self.directory.peers[batch.node_id].route
            job = batch.job
            if batch.send_spec:
                if not self._send_bundles(batch.node_id, job, route):
                    self.directory.write_off(batch.node_id, "unreachable (a bundle could not be sent)", "unreachable")
                    failed.add(batch.node_id)
                    continue
                loop.send(
                    self.agents,
                    wire.JobSpec(self.epoch, job.job_id, job.digest, job.options, frames=(job.function,)),
                    route,
                )
            if self._first_dispatch:
                self._first_dispatch = False
                log.info("first dispatch as leader (epoch %d)", self.epoch)
            tasks = [[index, attempt] for index, attempt, _ in batch.tasks]
            frames = tuple(args for _, _, args in batch.tasks)
            if not loop.send(self.agents, wire.Dispatch(self.epoch, job.job_id, tasks, frames=frames), route):
                # Gone, or 100,000 messages behind: its tasks go elsewhere, and a Hello tells if it is alive.
                self.directory.write_off(batch.node_id, "unreachable (a dispatch could not be sent)", "unreachable")
                failed.add(batch.node_id)
