"""What agents tell the coordinator: answers to Hello, results, tasks given back, heartbeats
and drains, and a relay's beats for the agents behind it. No sockets and no clock: every
handler takes ``now``; none needs anything sent.

Results are the coordinator's busiest message: their handler does one liveness beat and
one credit update a message, then hands each result to the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cluster.contract import wire
from cluster.coordinator.directory import AgentDirectory, AgentPeer

if TYPE_CHECKING:
    from cluster.runtime.loop import Route

log = logging.getLogger("cluster.coordinator")


class AgentMessages:
    def __init__(self, directory: AgentDirectory, bad: Callable[[bytes, str], None]) -> None:
        self.directory = directory
        self.scheduler = directory.scheduler
        self.liveness = directory.liveness
        self._bad = bad  # counts and logs a message dropped as unexpected

    def sender(self, route: Route, msg: wire.Message, now: float) -> AgentPeer | None:
        """The agent a message is from, to hand it to a handler; None when there is nothing
        more to do (a relay's own message, taken here, or one dropped). A stranger's Results
        are still taken: a draining agent's last results can overtake its deregistration,
        and the scheduler takes only the first result of each task."""
        d = self.directory
        via = ""
        if isinstance(route, tuple):
            via, identity = d.relays.heard(route[0], now), route[1]
            if not identity:  # from the relay itself
                if isinstance(msg, wire.RelayBeat) and msg.epoch == d.epoch:
                    self._on_relay_beat(via, msg, now)
                return None
        else:
            identity = route
        node_id = identity.decode(errors="replace")
        peer = d.peers.get(node_id)
        if peer is None or peer.via != via:  # unknown, or not on the route it is reached by
            if isinstance(msg, wire.Results):
                return AgentPeer(node_id, "", identity)
            self._bad(identity, "message from an agent that is not registered, or not behind this relay")
            return None
        return peer

    def _on_relay_beat(self, relay_id: str, msg: wire.RelayBeat, now: float) -> None:
        peers = self.directory.peers
        for node_id in msg.agents:
            peer = peers.get(node_id)
            if peer is not None and peer.up and peer.via == relay_id:
                self.liveness.beat(node_id, now)
        for node_id in msg.lost:
            peer = peers.get(node_id)
            if peer is not None and peer.via == relay_id:
                self.directory.write_off(
                    node_id, f"connection to relay {relay_id} closed", "closed", warn_if_idle=False
                )

    def on_welcome(self, peer: AgentPeer, msg: wire.Welcome, now: float) -> None:
        if msg.epoch != self.directory.epoch or msg.node_id != peer.node_id:
            return  # an answer to an older Hello of ours, or a confused agent
        if not peer.up:
            peer.up = True
            record = self.directory.records.get(peer.node_id)
            python = record.python if record is not None else ""  # which code it can load
            self.scheduler.agent_up(peer.node_id, msg.workers, msg.capacity, msg.held, python)
            if msg.draining:
                self.scheduler.agent_draining(peer.node_id)
            log.info(
                "agent %s connected: %d workers, capacity %d, holding %d",
                peer.node_id,
                msg.workers,
                msg.capacity,
                len(msg.held),
            )
        self.liveness.beat(peer.node_id, now)

    def on_heartbeat(self, peer: AgentPeer, msg: wire.Heartbeat, now: float) -> None:
        if peer.up:
            self.liveness.beat(peer.node_id, now)
            peer.load, peer.memory = msg.load, msg.memory

    def on_draining(self, peer: AgentPeer, msg: wire.Draining, now: float) -> None:
        self.scheduler.agent_draining(peer.node_id)

    def on_refused(self, peer: AgentPeer, msg: wire.Refused, now: float) -> None:
        log.warning("agent %s refused us: %s", peer.node_id, msg.reason)

    def on_results(self, peer: AgentPeer, msg: wire.Results, now: float) -> None:
        if peer.up:
            self.liveness.beat(peer.node_id, now)
            self.scheduler.agent_capacity(peer.node_id, msg.capacity)
        if msg.started:
            self.scheduler.on_started(peer.node_id, msg.started)
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

    def on_return_tasks(self, peer: AgentPeer, msg: wire.ReturnTasks, now: float) -> None:
        if not peer.up:
            return  # written off: what it held is queued again already
        self.liveness.beat(peer.node_id, now)
        self.scheduler.agent_capacity(peer.node_id, msg.capacity)  # first, or they come straight back
        for job_id, index, attempt in reversed(msg.items):  # each goes to the front: keep their order
            self.scheduler.on_returned(peer.node_id, job_id, index, attempt)
