"""What the coordinator's policy classes ask its loop to do: the only ways they reach a socket.

The agent directory and the client front decide; the loop (service.Coordinator) executes,
in the order given: a disconnect and a connect to one endpoint must not swap.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.contract.wire import Buffer, Message
    from cluster.runtime.loop import Route


@dataclasses.dataclass(frozen=True, slots=True)
class Connect:
    """Connect the agent socket to an agent's or a relay's endpoint."""

    endpoint: str


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnect:
    endpoint: str


@dataclasses.dataclass(frozen=True, slots=True)
class ToAgents:
    """One message, encoded once, to each route on the agent socket (a heartbeat goes to
    thousands of agents as one action)."""

    frames: list[Buffer]
    routes: list[Route]


@dataclasses.dataclass(frozen=True, slots=True)
class ToClient:
    message: Message
    identity: bytes


Action = Connect | Disconnect | ToAgents | ToClient
