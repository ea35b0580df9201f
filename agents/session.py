"""An agent's session with its coordinators, as a pure class.

The agent's loop (agents/agent.py) drives one; the scale simulator
(bench/scale/simfleet.py) drives one per simulated agent, so what a coordinator
sees of an agent's side of the protocol is written once. The session knows which
coordinator is the leader (the one with the highest epoch heard) and fences the
others, notes the leader's liveness, beats as often as the leader asks, and holds
the results not sent yet with the capacity the leader last heard of.

Every method takes ``now`` where time matters and returns the messages to send:
answers go to the coordinator that spoke, everything else to ``leader``. The caller
sends them and reports with ``sent`` what went, so that results stay held while no
coordinator is reachable. The session never touches a socket.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from cluster.contract import payload, wire
from cluster.contract.liveness import Liveness

# The agent's logger: operators read these lines as the agent's own.
log = logging.getLogger("agents.agent")

MAX_RESULTS_PER_MESSAGE: Final = 256
# Results are held back at most this long while the workers have queued work, so a
# busy agent answers in batches; one that is about to run dry answers at once.
FLUSH_DELAY: Final = 0.002

Key = tuple[str, int, int]  # (job id, task index, attempt)
Result = tuple[Key, int, wire.Buffer]  # a finished task: its key, status and payload
Doomed = Callable[[str, int], bool]  # (job id, task index) -> whether the task is dropped


class Keyed(Protocol):
    @property
    def key(self) -> Key: ...


_ACT: Final[tuple[bool, wire.Message | None]] = (True, None)
_DROP: Final[tuple[bool, wire.Message | None]] = (False, None)


class CoordinatorSession:
    # Slots: the simulator keeps a thousand of these in one process.
    __slots__ = (
        "node_id",
        "workers",
        "misses",
        "counters",
        "leader",
        "takes_back",
        "takes_output",
        "takes_load_failures",
        "max_epoch",
        "liveness",
        "interval",
        "next_beat",
        "draining",
        "outbox",
        "started",
        "flush_at",
        "announced",
        "_fenced",
    )

    def __init__(self, node_id: str, workers: int, *, interval: float, misses: int, counters: Counter[str]) -> None:
        self.node_id = node_id
        self.workers = workers
        self.misses = misses
        self.counters = counters  # the agent's: fenced_messages is counted there
        self.leader: bytes | None = None  # routing id of the coordinator we work for
        self.takes_back = False  # the leader accepts ReturnTasks (its Hello says so)
        self.takes_output = False  # the leader accepts TaskOutput (its Hello says so)
        self.takes_load_failures = False  # the leader accepts LoadFailed (its Hello says so)
        self.max_epoch = 0
        self.liveness = Liveness(interval, misses)
        self.interval = interval  # between heartbeats: the leader's once it says Hello, as it is the judge
        self.next_beat = 0.0
        self.draining = False
        self.outbox: list[Result] = []  # finished tasks the leader has not been sent; the agent appends
        self.started: list[Key] = []  # tasks seen running, the leader not told yet; the agent appends
        self.flush_at: float | None = None  # when held results must go at the latest
        self.announced = 0  # the capacity the leader knows
        self._fenced: set[tuple[bytes, int]] = set()  # (coordinator, epoch) already warned about

    # ------------------------------------------------------ what coordinators say

    def admit(self, identity: bytes, msg: wire.Message, now: float) -> tuple[bool, wire.Message | None]:
        """Whether to act on ``msg``, and what to answer ``identity`` at once. A message
        with an epoch below the highest seen comes from a deposed coordinator, which must
        not keep feeding this node: it is dropped and counted, and a Hello of one is
        refused so that it learns why. Any message from the leader proves it alive, not
        only its heartbeats."""
        epoch = getattr(msg, "epoch", self.max_epoch)
        if epoch >= self.max_epoch:
            if identity == self.leader:
                self.liveness.beat(identity, now)
            return _ACT
        self.counters["fenced_messages"] += 1
        if (identity, epoch) not in self._fenced:
            self._fenced.add((identity, epoch))
            log.warning("fenced: dropping messages of a deposed coordinator (epoch %d < %d)", epoch, self.max_epoch)
        if isinstance(msg, wire.Hello):
            return False, wire.Refused(f"epoch {epoch} is older than {self.max_epoch}", wire.Refusal.FENCED)
        return _DROP

    def hello(
        self, identity: bytes, msg: wire.Hello, now: float, capacity: int, held: list[list[object]]
    ) -> wire.Welcome:
        """Take an admitted Hello's sender as the leader. The Welcome tells it the
        capacity and every task the agent holds: ``held`` lists those queued and running,
        the results not sent yet are added to it."""
        if msg.epoch > self.max_epoch or self.leader != identity:
            log.info("coordinator %s (epoch %d) is the leader", msg.coordinator_id, msg.epoch)
        self.max_epoch, self.leader, self.takes_back = msg.epoch, identity, msg.takes_back
        self.takes_output, self.takes_load_failures = msg.takes_output, msg.takes_load_failures
        self.liveness = Liveness(msg.heartbeat_interval, self.misses)
        self.liveness.beat(identity, now)
        self._follow(msg.heartbeat_interval, now)
        self.announced = capacity
        held += [list(key) for key, _, _ in self.outbox]
        return wire.Welcome(self.node_id, msg.epoch, self.workers, capacity, held, self.draining)

    def on_heartbeat(self, identity: bytes, msg: wire.Heartbeat, now: float) -> None:
        """An admitted Heartbeat (``admit`` noted the leader alive): the leader may ask for
        another interval."""
        if identity == self.leader and msg.interval:
            self.liveness.set_interval(msg.interval)
            self._follow(msg.interval, now)

    def _follow(self, interval: float, now: float) -> None:
        """Beat as often as the leader asks: it stretches the interval for large fleets."""
        if interval != self.interval:
            log.info("heartbeats every %.2f s, as the leader asks", interval)
        self.interval = interval
        self.next_beat = min(self.next_beat, now + interval)

    def no_function(self, msg: wire.Dispatch) -> None:
        """Answer every task of a Dispatch for a job whose JobSpec never came as lost, so
        that its credit and its retry are not lost. (JobSpec precedes Dispatch on one
        connection: this should not happen.)"""
        err = payload.lost_error("the agent had no function for this job")
        self.outbox.extend(((msg.job_id, i, a), wire.LOST, err) for i, a in msg.tasks)

    def drop(self, doomed: Doomed) -> None:
        """Forget the held results of cancelled tasks: their client no longer waits."""
        self.outbox[:] = [r for r in self.outbox if not doomed(r[0][0], r[0][1])]
        self.started[:] = [k for k in self.started if not doomed(k[0], k[1])]

    # ------------------------------------------------------------ what we say

    def heartbeat(self, now: float, free: int, host: tuple[float, float] = (-1.0, -1.0)) -> wire.Heartbeat | None:
        """The heartbeat for the leader once one is due (``free``: tasks the agent could
        take beyond those it holds; ``host``: its host's load and memory in use, as
        resources.HostLoad samples them). None when none is due, with no leader, or when the
        leader has been silent for interval x misses: then it is forgotten, and results
        wait until a coordinator says Hello."""
        if now < self.next_beat:
            return None
        self.next_beat = now + self.interval
        if self.leader is None:
            return None
        if self.leader in self.liveness.expired(now):
            log.warning("coordinator silent; holding %d results until a coordinator says Hello", len(self.outbox))
            self.leader = None
            return None
        return wire.Heartbeat(self.node_id, self.max_epoch, free, load=host[0], memory=host[1])

    def drain(self) -> wire.Draining | None:
        """Take no new work and send results at once from now on; the leader, if there is
        one, is told with the message returned."""
        self.draining = True
        return wire.Draining(self.node_id) if self.leader is not None else None

    def results_due(self, now: float, queued: int) -> bool:
        """Whether the held results (and news of started tasks) go now. They wait,
        FLUSH_DELAY at most, only while the workers have queued tasks to go on with
        (``queued``, at least one per worker): a drain, a worker about to go idle or a full
        message sends them at once. Never while no coordinator leads."""
        if self.leader is None or not (self.outbox or self.started):
            self.flush_at = None  # nothing to send, or nobody to send it to: no early wake-ups
            return False
        if self.flush_at is None:
            self.flush_at = now + FLUSH_DELAY
        starving = queued < self.workers or self.draining
        if not starving and len(self.outbox) < MAX_RESULTS_PER_MESSAGE and now < self.flush_at:
            return False
        self.flush_at = None
        return True

    def results(self, capacity: int) -> wire.Results | None:
        """The next message of held results (and of tasks seen started) for the leader,
        carrying ``capacity`` if the leader does not know it yet; None when none are held.
        They stay held until the message is ``sent``."""
        if not self.outbox and not self.started:
            return None
        chunk = self.outbox[:MAX_RESULTS_PER_MESSAGE]
        items = [[job, index, attempt, status] for (job, index, attempt), status, _ in chunk]
        return wire.Results(
            self.max_epoch,
            items,
            capacity if capacity != self.announced else 0,
            [list(key) for key in self.started],
            frames=tuple(body for _, _, body in chunk),
        )

    def give_back(self, tasks: Sequence[Keyed], capacity: int) -> wire.ReturnTasks | wire.Results | None:
        """What tells the leader of queued tasks given back and of a capacity that shrank:
        a ReturnTasks with the tasks; with none, a Results with no result, which carries
        a new capacity to coordinators of any release; None when the leader knows it all.
        (A capacity that grew is told with the next results.)"""
        if tasks:
            return wire.ReturnTasks(self.max_epoch, [list(t.key) for t in tasks], capacity)
        if capacity < self.announced:
            return wire.Results(self.max_epoch, [], capacity)
        return None

    def sent(self, msg: wire.Results | wire.ReturnTasks) -> None:
        """``msg``, from ``results`` or ``give_back``, went to the leader: its results are
        no longer held, and the capacity it carries is the one the leader knows."""
        if msg.capacity:
            self.announced = msg.capacity
        if isinstance(msg, wire.Results):
            del self.outbox[: len(msg.items)]
            del self.started[: len(msg.started)]
