"""The agent's Prometheus metrics, read off its parts at each tick (the names and help
texts are what operators and dashboards know)."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kazoo.client import KazooClient

    from cluster.runtime.metrics import Metrics

    from .local_queue import LocalQueue
    from .pool import WorkerPool
    from .registration import Registration
    from .session import CoordinatorSession


class Source(Protocol):
    """The parts of an agent the export reads (agents/agent.Agent has them)."""

    session: CoordinatorSession
    queue: LocalQueue
    pool: WorkerPool
    counters: collections.Counter[str]
    outcomes: collections.Counter[str]
    zk: KazooClient
    registration: Registration


def export(m: Metrics, agent: Source, now: float) -> None:
    session, queue, slots, counters = agent.session, agent.queue, agent.pool.slots, agent.counters
    states = collections.Counter(slot.state.value for slot in slots)
    for state in ("starting", "idle", "busy", "backoff"):
        m.gauge("workers", "Worker processes by state", states.get(state, 0), state=state)
    m.gauge("queue_depth", "Tasks queued on this agent", len(queue.tasks))
    m.gauge("jobs", "Jobs whose function this agent holds", len(queue.jobs))
    m.gauge("heartbeat_interval_seconds", "Seconds between heartbeats, as the leader asks", session.interval)
    m.gauge("results_held", "Results waiting for a coordinator", len(session.outbox))
    m.gauge("draining", "1 while draining", 1.0 if session.draining else 0.0)
    m.gauge("zookeeper_connected", "1 while the ZooKeeper session is connected", 1.0 if agent.zk.connected else 0.0)
    age = session.liveness.age(session.leader, now) if session.leader else None
    m.gauge("leader_heartbeat_age_seconds", "Seconds since the leader was last heard", age if age else 0.0)
    m.counters("tasks_total", "Tasks finished on this agent, by outcome", agent.outcomes, "outcome")
    m.total("dropped_messages_total", "Malformed or unexpected messages dropped", counters["dropped_messages"])
    m.total("fenced_messages_total", "Messages from deposed coordinators dropped", counters["fenced_messages"])
    m.total(
        "registration_failures_total",
        "Tries to register again in ZooKeeper that it refused or did not answer",
        agent.registration.failed_rejoins,
    )
    m.total("worker_restarts_total", "Worker processes restarted", sum(s.restarts for s in slots))
    m.total(
        "workers_retired_total",
        "Worker processes replaced by clean ones: their job ended here, or another job wanted the slot",
        sum(s.retirements for s in slots),
    )
    m.total(
        "worker_messages_total",
        "Messages that carried tasks to workers (short tasks share one)",
        counters["worker_messages"],
    )
    m.total("bundles_received_total", "Shipped directories received from the leader", counters["bundles_received"])
    m.total("bundles_unpacked_total", "Shipped directories unpacked into the cache", counters["bundles_unpacked"])
    m.total("tasks_moved_total", "Tasks moved off a worker stuck on a long task", counters["tasks_moved"])
    m.total(
        "tasks_returned_total",
        "Queued tasks given back to the leader when this agent's capacity shrank",
        counters["tasks_returned"],
    )
