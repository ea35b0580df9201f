"""The coordinator's view of its agents: who is registered, where and by which route each
is reached, who answers, and when each is written off. No sockets and no clock: every
method takes ``now`` and returns the actions (connect, disconnect, send) for the loop.

ZooKeeper decides membership: the loop hands on the agents' and relays' records as their
znodes come, change and go (``on_member``, ``on_relay``), and the directory keeps them,
so moving agents between routes works from its own view. Heartbeats and closed connections
decide liveness: an agent that falls silent, whose connection closes, or that a dispatch
cannot reach is written off (its tasks go back to the scheduler's queue) and greeted with
Hello until it answers or its znode goes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from cluster.contract import wire
from cluster.contract.config import CoordinatorConfig
from cluster.contract.layout import AgentRecord, RelayRecord
from cluster.contract.liveness import BeatInterval, Liveness
from cluster.coordinator.actions import Action, Connect, Disconnect, ToAgents
from cluster.coordinator.relays import RelayTable, relay_identity
from cluster.coordinator.scheduler import Scheduler

if TYPE_CHECKING:
    from cluster.runtime.loop import Route
    from cluster.runtime.membership import MemberEvent

log = logging.getLogger("cluster.coordinator")

HELLO_RETRY = 0.2  # seconds between Hellos to an agent that has not answered


@dataclasses.dataclass
class AgentPeer:
    node_id: str
    endpoint: str
    identity: bytes
    up: bool = False
    next_hello: float = 0.0
    started: float = 0.0  # its process's start (AgentRecord), to tell which of two at one endpoint is live
    via: str = ""  # the relay it is reached through; "" when connected to directly
    route: Route = b""
    written_off: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # by cause
    # Bundles sent over this connection: an agent taken back after a write-off may be a new
    # process whose cache lost them, so they go again (it skips unpacking one it has).
    bundles: set[str] = dataclasses.field(default_factory=set)
    # Its host's load per usable CPU and fraction of memory in use, from its last heartbeat
    # (-1: not said, e.g. an agent of an earlier release).
    load: float = -1.0
    memory: float = -1.0

    def __post_init__(self) -> None:
        self.route = (relay_identity(self.via), self.identity) if self.via else self.identity


class AgentDirectory:
    def __init__(self, cfg: CoordinatorConfig, scheduler: Scheduler, coordinator_id: str) -> None:
        self.scheduler = scheduler
        self.coordinator_id = coordinator_id
        self.epoch = 0
        self.misses = cfg.heartbeat_misses
        self.peers: dict[str, AgentPeer] = {}
        self.records: dict[str, AgentRecord] = {}  # every registered agent, connected to or not
        self._at: dict[str, str] = {}  # endpoint -> the node id connected to there
        self.relays = RelayTable()
        self.liveness = Liveness(cfg.heartbeat_interval, cfg.heartbeat_misses)
        self.beats = BeatInterval(cfg.heartbeat_interval, cfg.heartbeat_budget, cfg.heartbeat_misses)
        self.written_off: collections.Counter[str] = collections.Counter()  # agents assumed lost, by cause
        self._next_beat = 0.0  # heartbeats go every beats.interval, not every (shorter) timer tick

    def route_to(self, node_id: str) -> Route | None:
        """The route to an agent that answers; None for one that does not."""
        peer = self.peers.get(node_id)
        return peer.route if peer is not None and peer.up else None

    def unsent_bundles(self, node_id: str, digests: Iterable[str]) -> list[str]:
        """Which of a job's bundles to send an agent before its JobSpec: those not sent over
        this connection, or forgotten since (``forget_bundles``). They count as sent now."""
        peer = self.peers[node_id]
        unsent = [d for d in digests if d not in peer.bundles]
        peer.bundles.update(unsent)
        return unsent

    def forget_bundles(self, node_id: str, digests: Iterable[str]) -> None:
        """The agent removes these from its cache once we answer (wire.ForgetBundles)."""
        peer = self.peers.get(node_id)
        if peer is not None:
            peer.bundles.difference_update(digests)

    # -------------------------------------------------------------- the lead

    def elected(
        self, epoch: int, relays: Mapping[str, RelayRecord], agents: Mapping[str, AgentRecord], now: float
    ) -> list[Action]:
        self.epoch = epoch
        out: list[Action] = []
        for relay_id, relay in relays.items():
            out += self._relay(relay_id, relay, now)
        for node_id, record in agents.items():
            out += self._agent(node_id, record)
        return out

    def step_down(self) -> list[Action]:
        out: list[Action] = []
        for node_id in list(self.peers):
            out += self._drop_peer(node_id)
        for relay_id in list(self.relays.records):
            out += self._drop_relay(relay_id)
        self.records.clear()  # the next lead starts from ZooKeeper's view
        return out

    # ------------------------------------------------------------ membership

    def on_member(self, ev: MemberEvent) -> list[Action]:
        return self._agent(ev.node_id, ev.record)

    def on_relay(self, ev: MemberEvent, now: float) -> list[Action]:
        return self._relay(ev.node_id, ev.record, now)

    def _agent(self, node_id: str, record: AgentRecord | None) -> list[Action]:
        """An agent's record came, changed or (None) went: join, move or drop it. A moved
        agent is dropped and joined again, so its unfinished tasks are queued again (each
        result is still delivered once)."""
        out: list[Action] = []
        if record is None:
            self.records.pop(node_id, None)
        else:
            self.records[node_id] = record
            self.scheduler.agent_python(node_id, record.python)  # a replaced agent's Welcome can come first
        peer = self.peers.get(node_id)
        if peer is not None and (
            record is None or peer.endpoint != record.endpoint or peer.via != self.relays.via(record)
        ):
            log.info("agent %s %s", node_id, "left" if record is None else "moved")
            out += self._drop_peer(node_id)
        if record is None:
            return out
        if node_id not in self.peers:
            via = self.relays.via(record)
            if not via:
                claim = self._claim_endpoint(node_id, record)
                if claim is None:
                    return out
                out += claim
            log.info(
                "agent %s joined at %s (%d workers)%s",
                node_id,
                record.endpoint,
                record.workers,
                f" behind relay {via}" if via else "",
            )
            peer = AgentPeer(node_id, record.endpoint, node_id.encode(), started=record.started, via=via)
            self.peers[node_id] = peer
            if via:
                out.append(self._tell_relay(via, connect=[peer]))
            else:
                self._at[record.endpoint] = node_id
                out.append(Connect(record.endpoint))
        if record.state == "draining":
            self.scheduler.agent_draining(node_id)
        return out

    def _claim_endpoint(self, node_id: str, record: AgentRecord) -> list[Action] | None:
        """What connecting to an agent at its endpoint takes; None when it may not be. A node replaced within the
        ZooKeeper session timeout (a rebooted machine, a pod given the old pod's address)
        brings a new agent up where the dead one's znode still stands. Both cannot be
        live, so the one started later is, and the other is dropped now: dropping it when
        its znode goes would disconnect the endpoint, the new agent's connection with it."""
        other = self.peers.get(self._at.get(record.endpoint, ""))
        if other is None or other.node_id == node_id:
            return []
        if record.started < other.started:
            log.warning(
                "ignoring agent %s at %s: agent %s, started later, is there now",
                node_id,
                record.endpoint,
                other.node_id,
            )
            return None
        log.warning(
            "agent %s is at %s, where agent %s was: taking %s as gone",
            node_id,
            record.endpoint,
            other.node_id,
            other.node_id,
        )
        return self._drop_peer(other.node_id)

    def _drop_peer(self, node_id: str) -> list[Action]:
        peer = self.peers.pop(node_id, None)
        if peer is None:
            return []
        requeued = self.scheduler.agent_down(node_id)
        if requeued:
            log.warning("agent %s lost: %d tasks requeued", node_id, requeued)
        self.liveness.forget(node_id)
        out: list[Action] = []
        if peer.via in self.relays.records:
            out.append(self._tell_relay(peer.via, disconnect=[peer]))
        if self._at.get(peer.endpoint) == node_id:
            del self._at[peer.endpoint]
            out.append(Disconnect(peer.endpoint))
        return out

    # ---------------------------------------------------------------- relays

    def _relay(self, relay_id: str, record: RelayRecord | None, now: float) -> list[Action]:
        """A relay came, changed or (None) went: connect to it (or stop), and move the
        agents that name it."""
        out: list[Action] = []
        old = self.relays.records.get(relay_id)
        if old is not None and old != record:
            out += self._drop_relay(relay_id)
        if record is not None and relay_id not in self.relays.records:
            log.info("relay %s joined at %s", relay_id, record.endpoint)
            self.relays.add(record, now)
            out.append(Connect(record.endpoint))
        return out + self._reroute(relay_id)

    def _drop_relay(self, relay_id: str) -> list[Action]:
        record = self.relays.remove(relay_id)
        log.info("relay %s left", relay_id)
        return [Disconnect(record.endpoint)]

    def _reroute(self, relay_id: str) -> list[Action]:
        out: list[Action] = []
        for node_id, record in list(self.records.items()):
            if record.relay == relay_id:
                out += self._agent(node_id, record)
        return out

    def _tell_relay(
        self, relay_id: str, connect: Iterable[AgentPeer] = (), disconnect: Iterable[AgentPeer] = ()
    ) -> ToAgents:
        """Which agents the relay connects to: the agents whose znodes name it, which we
        watch anyway (relays add no ZooKeeper load). Repeated with each Hello to an agent
        that has not answered, so a message lost before the relay was connected costs a retry."""
        msg = wire.RelayAgents(
            self.epoch, [[p.node_id, p.endpoint] for p in connect], [[p.node_id, p.endpoint] for p in disconnect]
        )
        return ToAgents(msg.encode(), [(relay_identity(relay_id), b"")])

    def _check_relays(self, now: float) -> list[Action]:
        """A relay answers each of our heartbeats itself. One silent for a liveness deadline
        while still registered (cut off from us while its ZooKeeper session lives, or hung
        under a long session timeout) is bypassed: its agents are reached directly. They
        move back once it answers again."""
        out: list[Action] = []
        for relay_id in self.relays.turned(now, self.liveness.deadline):
            if self.relays.bypassed(relay_id):
                log.warning(
                    "relay %s silent for %.1f s; reaching its agents directly",
                    relay_id,
                    self.relays.silence(relay_id, now),
                )
            else:
                log.info("relay %s answers again; reaching its agents through it", relay_id)
            out += self._reroute(relay_id)
        return out

    # ------------------------------------------------------------- write-offs

    def on_closed(self, endpoints: Iterable[str]) -> list[Action]:
        """Connections to agents or relays that closed: the process at the other end died
        or closed them (a crashed process's kernel closes its sockets at once). Written off
        now, not a liveness deadline later. A hung process or a cut cable closes nothing:
        heartbeats find those. One that is still alive answers the next Hello, or the
        next heartbeat for a relay, and is taken back."""
        out: list[Action] = []
        for endpoint in endpoints:
            node_id = self._at.get(endpoint)
            if node_id is not None:
                self.write_off(node_id, "connection closed", "closed", warn_if_idle=False)
            relay_id = self.relays.at(endpoint)
            if relay_id and not self.relays.bypassed(relay_id):
                log.warning("relay %s: connection closed; reaching its agents directly", relay_id)
                self.relays.closed(relay_id)
                out += self._reroute(relay_id)
        return out

    def write_off(self, node_id: str, why: str, cause: str, warn_if_idle: bool = True) -> None:
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
        peer.bundles.clear()
        self.liveness.forget(node_id)

    # ----------------------------------------------------------------- timers

    def tick(self, now: float) -> list[Action]:
        """Follow the fleet's size with the heartbeat interval, write off silent agents,
        bypass silent relays, and send what is due: heartbeats and Hellos."""
        # The budget counts every agent, also those behind relays (whose heartbeats stop at
        # their relay): it bounds the fleet's heartbeat traffic, not only ours.
        if self.beats.update(len(self.peers), now):
            log.info(
                "heartbeats every %.2f s for %d agents; one unheard for %.1f s is lost",
                self.beats.interval,
                len(self.peers),
                self.beats.interval * self.misses,
            )
        self.liveness.deadline = self.beats.deadline(now)
        out = self._check_relays(now)
        for node_id in self.liveness.expired(now):
            self.write_off(str(node_id), f"silent for {self.liveness.deadline:.1f} s", "silent")
        beating = now >= self._next_beat
        beats: list[Route] = []
        if beating:
            self._next_beat = max(self._next_beat + self.beats.interval, now)
            # A relay answers for itself (see _check_relays) and passes the beat on to its agents.
            beats = [(relay_identity(relay_id), b"") for relay_id in self.relays.records]
        due: list[AgentPeer] = []
        for peer in self.peers.values():
            if peer.up:
                if beating and not peer.via:
                    beats.append(peer.route)
            elif now >= peer.next_hello:
                due.append(peer)
        if beats:
            # Each beat tells the agents the interval, so they follow it when it changes.
            out.append(
                ToAgents(wire.Heartbeat(self.coordinator_id, self.epoch, 0, self.beats.interval).encode(), beats)
            )
        if due:
            relayed: dict[str, list[AgentPeer]] = collections.defaultdict(list)
            for peer in due:
                if peer.via:
                    relayed[peer.via].append(peer)
            for relay_id, peers in relayed.items():  # a relay connects to an agent before it can pass a Hello on
                out.append(self._tell_relay(relay_id, connect=peers))
            hello = wire.Hello(
                self.coordinator_id,
                self.epoch,
                self.beats.interval,
                takes_back=True,
                takes_output=True,
                takes_load_failures=True,
            )
            out.append(ToAgents(hello.encode(), [peer.route for peer in due]))
            for peer in due:
                peer.next_hello = now + HELLO_RETRY
        return out
