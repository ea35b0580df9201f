"""The coordinator's view of the relays (agents/relay.py): which are registered, which
answer our heartbeats, and so the route to each agent that names one."""

from __future__ import annotations

import math

from cluster.contract.layout import AgentRecord, RelayRecord


def relay_identity(relay_id: str) -> bytes:
    """A relay's routing id on its coordinator-facing socket; '/' cannot be in a node id."""
    return f"relay/{relay_id}".encode()


class RelayTable:
    def __init__(self) -> None:
        self.records: dict[str, RelayRecord] = {}  # relay id -> record, while registered
        self.ids: dict[bytes, str] = {}  # routing id -> relay id: the routes loop.read_router unwraps
        self._heard: dict[str, float] = {}  # relay id -> when it, or an agent through it, was last heard
        self._bypassed: set[str] = set()  # registered but silent: their agents are reached directly

    def add(self, record: RelayRecord, now: float) -> None:
        self.records[record.node_id] = record
        self.ids[relay_identity(record.node_id)] = record.node_id
        self._heard[record.node_id] = now

    def remove(self, relay_id: str) -> RelayRecord:
        del self.ids[relay_identity(relay_id)]
        del self._heard[relay_id]
        self._bypassed.discard(relay_id)
        return self.records.pop(relay_id)

    def via(self, record: AgentRecord) -> str:
        """The relay to reach an agent through: the one it names, while that one is
        registered and answers; "" for directly."""
        relay = record.relay
        return relay if relay in self.records and relay not in self._bypassed else ""

    def heard(self, routing_id: bytes, now: float) -> str:
        """Note a message through a relay; its relay id ("?" for one we do not know)."""
        relay_id = self.ids.get(routing_id, "?")
        if relay_id in self._heard:
            self._heard[relay_id] = now
        return relay_id

    def silence(self, relay_id: str, now: float) -> float:
        return now - self._heard[relay_id]

    def turned(self, now: float, deadline: float) -> list[str]:
        """Relays silent for longer than ``deadline`` that were not yet bypassed (now they
        are), and bypassed ones heard again (now they are not)."""
        out = []
        for relay_id in self.records:
            silent = now - self._heard[relay_id] > deadline
            if silent and relay_id not in self._bypassed:
                self._bypassed.add(relay_id)
            elif not silent and relay_id in self._bypassed:
                self._bypassed.discard(relay_id)
            else:
                continue
            out.append(relay_id)
        return out

    def at(self, endpoint: str) -> str:
        """The relay registered at ``endpoint``; "" for none (a few relays: a scan)."""
        return next((relay_id for relay_id, r in self.records.items() if r.endpoint == endpoint), "")

    def closed(self, relay_id: str) -> None:
        """Our connection to it closed: bypassed now, until it is heard again."""
        self._bypassed.add(relay_id)
        self._heard[relay_id] = -math.inf

    def bypassed(self, relay_id: str) -> bool:
        return relay_id in self._bypassed
