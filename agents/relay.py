"""A relay: the coordinator holds one ZeroMQ connection to it instead of one to each
agent that names it (``relay = "<id>"``), and it forwards their messages both ways.

Why: a ZeroMQ connection costs the process holding it about 85 KiB once some 512
messages have crossed it (libzmq keeps two 16 KiB chunks of message slots per
direction; ``python -m bench.zmq_floor``). A relay per rack moves that cost off the
coordinator, whose memory then grows by its bookkeeping alone per agent.

- Upstream: a ROUTER bound at the relay's endpoint, published in ZooKeeper under
  ``relays/<id>``. The leader connects to it as to an agent; a message for an agent
  arrives as [coordinator, agent id, header, payload...].
- Downstream: a ROUTER connected to each agent the leader names in ``RelayAgents``
  (the agents whose znodes name this relay; the leader watches them anyway, so relays
  add no ZooKeeper reads or watches). To an agent, the relay is its coordinator; the
  agent's answers go upstream as [leader, agent id, header, payload...].
- The leader is the upstream peer that sent the highest epoch. Agents still fence by
  epoch themselves; the relay only picks where their answers go.
- A message with an empty agent id is for the relay: ``RelayAgents`` from the leader,
  or the coordinator's heartbeat. The relay passes that heartbeat on to each of its
  agents and answers it with one ``RelayBeat`` naming the agents whose own heartbeats
  came since the last one; agents' heartbeats go no further. The coordinator so handles
  one heartbeat per relay, not per agent, and a relay cut off from the coordinator is
  bypassed even while its ZooKeeper session lives.

Payload frames are forwarded by reference and never decoded. Nothing is kept: a
message the relay cannot deliver is counted and dropped, and the coordinator finds
its agent silent and queues its tasks again, as for a lost connection. When the relay
goes (its znode expires or it stops) or stops answering, the coordinator connects to
its agents directly.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from cluster.contract import layout, security, wire
from cluster.contract.config import RelayConfig
from cluster.contract.layout import RelayRecord
from cluster.contract.version import PROTOCOL_VERSION, __version__
from cluster.runtime import loop
from cluster.runtime.daemon import STOP, Harness

from .registration import Registration

if TYPE_CHECKING:
    from cluster.runtime.metrics import Metrics

log = logging.getLogger("agents.relay")

TICK = 0.5
LINGER = 1.0  # seconds a stopping relay goes on forwarding after it deregistered


class Relay:
    def __init__(self, cfg: RelayConfig):
        self.cfg = cfg
        self.relay_id = layout.check_name(cfg.relay_id or socket.gethostname(), "relay id")
        # Toward the coordinator it stands in for agents, toward agents for the coordinator.
        self.keys = security.for_daemon(cfg.keys, cfg.insecure, "agent")
        self.coordinator_keys = security.load(cfg.keys, "coordinator", with_clients=False) if cfg.keys else None
        self.harness = Harness()
        self.waker, self.notifier = self.harness.waker, self.harness.notifier
        self.agents: dict[str, str] = {}  # node id -> endpoint, as the leader named them
        self._at: dict[str, set[str]] = {}  # endpoint -> the agents named there
        self._heard: set[bytes] = set()  # agents whose heartbeat came since the last RelayBeat
        self.leader: bytes | None = None
        self.leader_epoch = -1
        self.counters: collections.Counter = collections.Counter()
        self.metrics: Metrics | None = None
        self._stopping = False
        self._warned = 0
        # What a coordinator says to the relay itself (everything else is passed on unread).
        self.handlers: dict[type[wire.Message], Callable[[bytes, Any, list[Any]], None]] = {
            wire.Heartbeat: self._on_heartbeat,
            wire.RelayAgents: self._from_leader,
        }

    def stop(self) -> None:
        """Safe from a signal handler."""
        self.harness.stop()

    def run(self, on_registered: Callable[[Relay], None] | None = None) -> int:
        with self.harness as h:
            self._start(h)
            if on_registered:
                on_registered(self)
            self._loop()
            self.registration.deregister()
            self._linger()
            log.info("relay %s deregistered; counters %s", self.relay_id, dict(self.counters))
        return 0

    def _start(self, h: Harness) -> None:
        cfg = self.cfg
        self.up = h.socket(zmq.ROUTER, max_payload=cfg.max_payload, routing_id=f"relay/{self.relay_id}".encode())
        # Unique per process: an agent takes its leader's routing id from whoever said Hello.
        # No ROUTER_HANDOVER, and none needed: the leader disconnects an agent's old endpoint
        # before it names a new one. (It would be safe: libzmq ends a handed-over pipe only
        # once the message being read from it is whole, router.cpp's terminate_current_in.)
        self.down = h.socket(
            zmq.ROUTER, max_payload=cfg.max_payload, routing_id=f"relay/{self.relay_id}/{uuid.uuid4().hex[:8]}".encode()
        )
        self.closed = h.watch_disconnects(self.down)
        if self.keys and self.coordinator_keys:
            security.serve(self.up, self.keys, "coordinators")
            security.connect_to(self.down, self.coordinator_keys, self.coordinator_keys.agent)
            h.authenticate({"coordinators": {self.keys.coordinator}})
        bound = loop.bind(self.up, cfg.bind)
        self.endpoint = loop.advertised(bound, cfg.advertise, cfg.zk)
        self.zk = zk = h.connect_zookeeper(cfg.zk, session_timeout=cfg.zk_session_timeout, auth_file=cfg.zk_auth)
        record = RelayRecord(
            node_id=self.relay_id,
            host=socket.gethostname(),
            endpoint=self.endpoint,
            version=__version__,
            protocol=PROTOCOL_VERSION,
            pid=os.getpid(),
            started=time.time(),
        )
        self.registration = Registration(zk, cfg.cluster, record)
        self.registration.register()
        self.registration.keep()
        self.metrics = h.serve_metrics(cfg.metrics_port, cfg.bind)
        log.info("relay %s registered at %s", self.relay_id, self.endpoint)
        self.notifier.ready(f"relay {self.relay_id} at {self.endpoint}")

    # ---------------------------------------------------------------- loop

    def _loop(self, until: float | None = None) -> None:
        poller = zmq.Poller()
        poller.register(self.up, zmq.POLLIN)
        poller.register(self.down, zmq.POLLIN)
        poller.register(self.closed, zmq.POLLIN)
        poller.register(self.waker.fd, zmq.POLLIN)
        next_tick = 0.0
        while until is not None or not self._stopping:
            now = time.monotonic()
            if until is not None and now >= until:
                return
            ready = dict(poller.poll(loop.poll_ms(min(next_tick, until or next_tick))))
            # Agents first: polling a ROUTER reads a message's first frame ahead, and a
            # disconnect (RelayAgents) before the rest is read aborts libzmq (`!_more`, fq.cpp).
            if self.down in ready or self.closed in ready:  # what a closed connection delivered goes up first
                self._from_agents()
            if self.up in ready:
                self._from_coordinators()
            if self.closed in ready:
                self._on_closed(loop.disconnected(self.closed))
            if self.waker.fd in ready:
                for kind, value in self.waker.drain():
                    self._on_event(kind, value)
            now = time.monotonic()
            if now >= next_tick:
                self.notifier.pet(now)
                self._export()
                next_tick = now + TICK

    def _linger(self) -> None:
        """Deregistered: the coordinator is moving our agents to direct connections. What is
        on the wire meanwhile (results, above all) still goes through."""
        self._loop(until=time.monotonic() + LINGER)

    def _on_event(self, kind: str, value: object) -> None:
        if kind == STOP:  # the one event a relay has
            self._stopping = True
            self.notifier.stopping("stopping")

    def _from_leader(self, sender: bytes, msg: wire.RelayAgents, body: list[Any]) -> None:
        if sender != self.leader:
            self._drop(f"RelayAgents from {sender[:64]!r}, which does not lead")
            return
        self._on_relay_agents(msg)

    def _on_relay_agents(self, msg: wire.RelayAgents) -> None:
        for node_id, endpoint in msg.disconnect:
            if self.agents.get(node_id) == endpoint:
                del self.agents[node_id]
                self._release(node_id, endpoint)
                log.info("agent %s is no longer behind this relay", node_id)
        for node_id, endpoint in msg.connect:
            old = self.agents.get(node_id)
            if old == endpoint:
                continue  # the leader repeats it until the agent answers
            self.agents[node_id] = endpoint
            if old is not None:
                self._release(node_id, old)
            named = self._at.setdefault(endpoint, set())
            if not named:
                self.down.connect(endpoint)
            named.add(node_id)
            log.info("agent %s at %s is behind this relay", node_id, endpoint)

    def _release(self, node_id: str, endpoint: str) -> None:
        # A replacement agent can stand at a dead one's endpoint: keep the connection for it.
        named = self._at[endpoint]
        named.discard(node_id)
        if not named:
            del self._at[endpoint]
            try:
                self.down.disconnect(endpoint)
            except zmq.ZMQError:
                pass

    # ------------------------------------------------------------ forwarding

    def _from_coordinators(self) -> None:
        for _ in range(1000):
            try:
                frames = loop.recv_frames(self.up)
            except zmq.Again:
                return
            if len(frames) < 3:
                self._drop("from a coordinator without an agent's routing id")
                continue
            sender, agent, body = frames[0].bytes, frames[1].bytes, frames[2:]
            if not agent:  # for the relay itself
                self._for_me(sender, body)
                continue
            self._follow(sender, body)
            if not loop.send_frames(self.down, body, agent):
                self._drop(f"for agent {agent[:64]!r}, which is not connected to this relay")
                continue
            self.counters["to_agents"] += 1

    def _follow(self, sender: bytes, body: list) -> None:
        """Answers go to the coordinator that sent the highest epoch."""
        if sender == self.leader:
            return
        try:
            self._note_epoch(sender, wire.decode(body))
        except wire.ProtocolError:
            pass  # the agent says what it thinks of it

    def _note_epoch(self, sender: bytes, msg: wire.Message) -> None:
        epoch = getattr(msg, "epoch", None)
        if isinstance(epoch, int) and epoch > self.leader_epoch:
            log.info("coordinator %r (epoch %d) leads", sender[:64], epoch)
            self.leader, self.leader_epoch = sender, epoch

    def _for_me(self, sender: bytes, body: list[Any]) -> None:
        try:
            msg = wire.decode(body)
        except wire.ProtocolError as exc:
            self._drop(f"for the relay that it cannot read: {exc}")
            return
        self._note_epoch(sender, msg)
        handler = self.handlers.get(type(msg))
        if handler is None:
            self._drop(f"{type(msg).__name__} for the relay from {sender[:64]!r}")
            return
        handler(sender, msg, body)

    def _on_heartbeat(self, sender: bytes, msg: wire.Heartbeat, body: list[Any]) -> None:
        heard: set[bytes] = set()
        if sender == self.leader:  # another coordinator only learns that the relay is alive
            for agent in self.agents:  # the same frames, encoded once by the coordinator
                loop.send_frames(self.down, body, agent.encode())
            heard, self._heard = self._heard, set()
        names = [a.decode(errors="replace") for a in heard]
        loop.send(self.up, wire.RelayBeat(max(0, self.leader_epoch), names), (sender, b""))

    def _on_closed(self, endpoints: list[str]) -> None:
        """Agents' connections that closed (their process died): the leader hears it now,
        not a liveness deadline later."""
        lost = [node_id for endpoint in endpoints for node_id in self._at.get(endpoint, ())]
        if lost and self.leader is not None:
            log.info("connection closed to %d agents: %s", len(lost), ", ".join(lost[:10]))
            loop.send(self.up, wire.RelayBeat(max(0, self.leader_epoch), [], lost), (self.leader, b""))

    def _from_agents(self) -> None:
        for _ in range(1000):
            try:
                frames = loop.recv_frames(self.down)
            except zmq.Again:
                return
            if len(frames) == 2 and self._is_heartbeat(frames[1]):
                self._heard.add(frames[0].bytes)  # its routing id, not what it claims to be
                self.counters["heartbeats_gathered"] += 1
                continue
            if self.leader is None or not loop.send_frames(self.up, frames, self.leader):
                self._drop("from an agent while no coordinator is connected")
                continue
            self.counters["to_coordinator"] += 1

    @staticmethod
    def _is_heartbeat(header: zmq.Frame) -> bool:
        # Only a message of one frame can be a heartbeat: larger ones pass without decoding.
        try:
            return isinstance(wire.decode([header]), wire.Heartbeat)
        except wire.ProtocolError:
            return False  # forwarded: the coordinator counts and drops it

    def _drop(self, why: str) -> None:
        self.counters["dropped_messages"] += 1
        if self._warned < 10:
            self._warned += 1
            log.warning("dropping a message %s", why)

    def _export(self) -> None:
        m = self.metrics
        if m is None:
            return
        m.gauge("relay_agents", "agents that name this relay", len(self.agents))
        m.gauge("zookeeper_connected", "1 while the ZooKeeper session is connected", 1.0 if self.zk.connected else 0.0)
        m.counters(
            "relay_messages_total",
            "messages forwarded, by direction",
            {"to_agents": self.counters["to_agents"], "to_coordinator": self.counters["to_coordinator"]},
            "direction",
        )
        m.total(
            "relay_heartbeats_gathered_total",
            "agents' heartbeats folded into RelayBeats",
            self.counters["heartbeats_gathered"],
        )
        m.total(
            "dropped_messages_total", "messages dropped (no route, or malformed)", self.counters["dropped_messages"]
        )
        m.total(
            "registration_failures_total",
            "Tries to register again in ZooKeeper that it refused or did not answer",
            self.registration.failed_rejoins,
        )
