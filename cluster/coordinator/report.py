"""What the coordinator tells about itself: the ``clusterctl status`` document (tests and
scripts read its keys) and the Prometheus metrics. Both only read the directory, the
front and the scheduler."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cluster.coordinator.directory import AgentDirectory
    from cluster.coordinator.front import ClientFront
    from cluster.coordinator.scheduler import Job, Scheduler
    from cluster.runtime.metrics import Metrics


class Source(Protocol):
    """The coordinator, as the report sees it."""

    id: str
    epoch: int
    leading: bool
    endpoint: str
    scheduler: Scheduler
    directory: AgentDirectory
    front: ClientFront
    counters: collections.Counter[str]  # the loop's own: malformed or unexpected messages dropped

    def rejected_keys(self) -> int: ...

    def zookeeper_connected(self) -> bool: ...


def status(c: Source, now: float) -> dict[str, Any]:
    s, d = c.scheduler, c.directory
    agents: dict[str, dict[str, Any]] = {}
    for node_id, peer in d.peers.items():
        slot = s.agents.get(node_id)
        age = d.liveness.age(node_id, now)
        agent: dict[str, Any]
        if slot is None:  # registered in ZooKeeper but not answering (yet, or any more)
            agent = {
                "state": "unreachable",
                "workers": 0,
                "busy": 0,
                "in_flight": 0,
                "heartbeat_age": None if age is None else round(age, 3),
            }
        else:
            agent = {
                "state": "draining" if slot.draining else "ready",
                "workers": slot.workers,
                "busy": min(slot.workers, len(slot.in_flight)),
                "in_flight": len(slot.in_flight),
                "capacity": slot.capacity,
                "heartbeat_age": round(age or 0.0, 3),
            }
        if peer.via:
            agent["via"] = peer.via
        agent["written_off"] = dict(peer.written_off)
        agent["host_load"] = None if peer.load < 0 else peer.load  # 1-minute load average per usable CPU
        agent["memory_used"] = None if peer.memory < 0 else peer.memory  # fraction of the host's memory
        agents[node_id] = agent
    workers = sum(a["workers"] for a in agents.values())
    busy = sum(a["busy"] for a in agents.values())
    relays = d.relays
    return {
        "coordinator": c.id,
        "epoch": c.epoch,
        "leading": c.leading,
        "endpoint": c.endpoint,
        "nodes": dict(collections.Counter(a["state"] for a in agents.values())),
        "workers": {"total": workers, "busy": busy, "idle": workers - busy},
        "agents": agents,
        "jobs": len(s.jobs),
        "queued": s.queued,
        "running": sum(a["in_flight"] for a in agents.values()),
        "delivered": s.counters["delivered"],
        "outcomes": dict(s.outcomes),
        "failed": sum(n for outcome, n in s.outcomes.items() if outcome != "ok"),
        "tasks_per_second": round(c.front.throughput.rate(now, s.counters["delivered"]), 1),
        "heartbeat_interval": d.beats.interval,
        "relays": {relay_id: r.endpoint for relay_id, r in relays.records.items()},
        "relays_bypassed": sorted(r for r in relays.records if relays.bypassed(r)),
        "counters": dict(c.counters + c.front.counters + s.counters, rejected_keys=c.rejected_keys()),
        "written_off": dict(d.written_off),  # agents assumed lost while registered, by cause
        "job_progress": job_progress(s.jobs.values()),
    }


def job_progress(jobs: Iterable[Job]) -> dict[str, dict[str, Any]]:
    """By job id (the record's, clusterctl jobs): its results delivered by this leader,
    failed ones, and tasks without a result yet; an Executor's functions add up. A job
    that some node cannot load has ``refused``: by node, the error its function raised there."""
    progress: dict[str, dict[str, Any]] = {}
    for job in jobs:
        record = job.options.get("record")
        if type(record) is not int:
            continue
        p = progress.setdefault(str(record), {"done": 0, "failed": 0, "outstanding": 0})
        p["done"] += job.done
        p["failed"] += job.failed
        p["outstanding"] += len(job.tasks)
        for node, kind, message, _ in job.refused.values():
            p.setdefault("refused", {})[node] = f"{kind}: {message}"
    return progress


def export(m: Metrics, c: Source, now: float) -> None:
    s, d = c.scheduler, c.directory
    m.gauge("leader", "1 while this coordinator leads", 1.0 if c.leading else 0.0)
    m.gauge("epoch", "Epoch of this coordinator's lead", c.epoch)
    m.gauge(
        "zookeeper_connected", "1 while the ZooKeeper session is connected", 1.0 if c.zookeeper_connected() else 0.0
    )
    m.gauge("agents", "Agents connected", sum(1 for p in d.peers.values() if p.up))
    m.gauge("workers", "Workers on connected agents", sum(a.workers for a in s.agents.values()))
    m.gauge("queue_depth", "Tasks waiting for an agent", s.queued)
    m.gauge("tasks_running", "Tasks held by agents", sum(len(a.in_flight) for a in s.agents.values()))
    m.gauge("jobs", "Open jobs", len(s.jobs))
    m.gauge(
        "heartbeat_interval_seconds",
        "Seconds between heartbeats, both ways (stretched with the fleet)",
        d.beats.interval,
    )
    for node_id in s.agents:
        age = d.liveness.age(node_id, now)
        if age is not None:
            m.gauge("agent_heartbeat_age_seconds", "Seconds since an agent was last heard", age, node=node_id)
    m.counters("tasks_total", "Tasks delivered to clients, by outcome", s.outcomes, "outcome")
    m.total("dropped_messages_total", "Malformed or unexpected messages dropped", c.counters["dropped_messages"])
    m.counters(
        "agents_written_off_total",
        "Agents assumed lost while still registered, by what told: their "
        "connection closed, they fell silent, or a dispatch to them could not be sent",
        d.written_off,
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
