"""What the dashboard knows and what it sends, with no I/O: the fleet's rows (ZooKeeper's
records joined with the leader's status), the membership timeline, the Work series of the
last hour, the jobs and the coordinator's election.

Every input is a method that takes ``now`` (wall-clock seconds); ``patch(now)`` returns
what changed since the last patch, and ``snapshot()`` what has been sent so far, so a
browser that connects gets a snapshot the next patch applies to.
Browsers are sent changed rows only: at 5,000 nodes the table is sent once per browser.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from cluster.contract.layout import AgentRecord, JobRecord, LeaderRecord

HOUR = 3600
TIMELINE = 1000  # membership events kept (and sent to a new browser)
FAILOVERS = 100

Row = dict[str, Any]


def heartbeat_shown(age: float | None, interval: float) -> int | None:
    """An agent's heartbeat age as the table shows it: 0 while on time (within two
    intervals), else whole seconds. Only a change of this is sent, so a fleet whose
    heartbeats arrive on time costs nothing per second."""
    if age is None:
        return None
    return 0 if age <= 2 * interval else int(age)


def queue_wait(queued: int, rate: float) -> float | None:
    """How long a task now queued waits before dispatch, estimated by Little's law (queue
    length over the rate tasks leave it, the last minute's): the leader's status carries no
    dispatch latency (its Prometheus histogram does). None: a queue that does not move."""
    if not queued:
        return 0.0
    return round(queued / rate, 3) if rate > 0 else None


def diff(old: dict[str, Row], new: dict[str, Row]) -> dict[str, list[Any]]:
    """The rows to set (new or changed) and the keys to delete."""
    return {
        "set": [row for key, row in new.items() if old.get(key) != row],
        "del": [key for key in old if key not in new],
    }


@dataclasses.dataclass
class Series:
    """One sample a second at most, for an hour: [time, tasks/s, queued, running, failed/s,
    queue wait]."""

    samples: collections.deque[list[float | None]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=HOUR)
    )
    sent: int = 0  # samples appended since the start, of which ``sent`` were in a patch
    appended: int = 0

    def add(self, sample: list[float | None]) -> None:
        self.samples.append(sample)
        self.appended += 1

    def unsent(self) -> list[list[float | None]]:
        fresh = min(self.appended - self.sent, len(self.samples))
        self.sent = self.appended
        return list(self.samples)[len(self.samples) - fresh :] if fresh else []


class State:
    def __init__(self) -> None:
        self.members: dict[str, AgentRecord] = {}
        self.status: dict[str, Any] | None = None
        self.status_error = "no status yet"
        self.jobs: dict[int, tuple[JobRecord, bool]] = {}  # id -> (record, attached)
        self.leader: LeaderRecord | None = None
        self.candidates = 0
        self.timeline: collections.deque[Row] = collections.deque(maxlen=TIMELINE)
        self.failovers: collections.deque[Row] = collections.deque(maxlen=FAILOVERS)
        self.series = Series()
        self._fresh_timeline: list[Row] = []
        self._written_off: dict[str, dict[str, int]] | None = None  # per node, as the last status said
        self._last_totals: tuple[float, int, int] | None = None  # (when, delivered, failed)
        self._job_rate: dict[int, tuple[float, int, float]] = {}  # id -> (when, done, rate)
        self._sent_nodes: dict[str, Row] = {}
        self._sent_jobs: dict[str, Row] = {}
        self._sent_head: Row = {}
        self.seq = 0

    # ------------------------------------------------------------------ inputs

    def _event(self, now: float, kind: str, node: str, detail: str = "") -> None:
        entry = {"t": round(now, 3), "kind": kind, "node": node, "detail": detail}
        self.timeline.append(entry)
        self._fresh_timeline.append(entry)

    def member_joined(self, record: AgentRecord, now: float) -> None:
        self.members[record.node_id] = record
        self._event(now, "joined", record.node_id, f"{record.host}, {record.workers} workers, {record.version}")

    def member_changed(self, record: AgentRecord, now: float) -> None:
        old = self.members.get(record.node_id)
        self.members[record.node_id] = record
        if old is not None and old.state != record.state:
            self._event(now, "draining" if record.state == "draining" else record.state, record.node_id)

    def member_left(self, node_id: str, now: float) -> None:
        if self.members.pop(node_id, None) is not None:
            self._event(now, "left", node_id)

    def job_seen(self, job_id: int, record: JobRecord, attached: bool) -> None:
        self.jobs[job_id] = (record, attached)

    def job_gone(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)
        self._job_rate.pop(job_id, None)

    def leader_seen(self, leader: LeaderRecord | None, now: float) -> None:
        """The leader znode as read; None between two leads (the next one took over from
        the last one seen)."""
        last = self.failovers[-1] if self.failovers else None
        if leader is not None and (
            last is None or (last["to"], last["epoch"]) != (leader.coordinator_id, leader.epoch)
        ):
            self.failovers.append(
                {
                    "t": round(now, 3),
                    "from": last["to"] if last else "",
                    "to": leader.coordinator_id,
                    "epoch": leader.epoch,
                }
            )
        self.leader = leader

    def candidates_seen(self, count: int) -> None:
        self.candidates = count

    def status_failed(self, why: str) -> None:
        self.status, self.status_error = None, why

    def status_seen(self, status: dict[str, Any], now: float) -> None:
        """A status document of the leader (``clusterctl status --json``)."""
        self.status, self.status_error = status, ""
        written = {node: dict(a.get("written_off") or {}) for node, a in status.get("agents", {}).items()}
        if self._written_off is not None:  # the first status is the baseline, not news
            for node, causes in written.items():
                before = self._written_off.get(node, {})
                for cause, n in sorted(causes.items()):
                    if n > before.get(cause, 0):
                        self._event(now, "written off", node, cause)
        self._written_off = written
        delivered, failed = int(status.get("delivered", 0)), int(status.get("failed", 0))
        last = self._last_totals
        if last is not None and now > last[0] and delivered >= last[1]:
            dt = now - last[0]
            self.series.add(
                [
                    round(now, 3),
                    round((delivered - last[1]) / dt, 2),
                    status.get("queued", 0),
                    status.get("running", 0),
                    round(max(0, failed - last[2]) / dt, 2),
                    queue_wait(status.get("queued", 0), status.get("tasks_per_second", 0.0)),
                ]
            )
        self._last_totals = (now, delivered, failed)
        for job_id, live in status.get("job_progress", {}).items():
            self._rate(int(job_id), live.get("done", 0), now)

    def _rate(self, job_id: int, done: int, now: float) -> None:
        when, before, rate = self._job_rate.get(job_id, (now, done, 0.0))
        if now - when >= 0.5:
            # A moving average over a few seconds: a job's results arrive in bursts.
            rate = 0.7 * rate + 0.3 * max(0, done - before) / (now - when)
            when, before = now, done
        self._job_rate[job_id] = (when, before, rate)

    # ------------------------------------------------------------------ views

    def node_rows(self) -> dict[str, Row]:
        status = self.status or {}
        live = status.get("agents", {})
        interval = float(status.get("heartbeat_interval", 1.0))
        rows = {}
        for node, rec in self.members.items():
            a = live.get(node)
            if a is not None:
                state = a["state"]
            else:
                state = "draining" if rec.state == "draining" else "joining" if self.status else rec.state
            rows[node] = {
                "id": node,
                "host": rec.host,
                "state": state,
                "busy": a["busy"] if a else 0,
                "workers": a["workers"] if a else rec.workers,
                "in_flight": a["in_flight"] if a else 0,
                "hb": heartbeat_shown(a.get("heartbeat_age"), interval) if a else None,
                "cores": rec.cores,
                "memory": rec.memory,
                # Coarse steps: a row is sent again only when what it shows changes.
                "host_load": _step((a or {}).get("host_load"), 0.05),
                "memory_used": _step((a or {}).get("memory_used"), 0.01),
                "version": rec.version,
                "python": rec.python,
                "labels": rec.labels,
                "relay": (a or {}).get("via") or rec.relay,
                "started": rec.started,
                "written_off": sum((a or {}).get("written_off", {}).values()),
            }
        return rows

    def job_rows(self) -> dict[str, Row]:
        progress = (self.status or {}).get("job_progress", {})
        rows = {}
        for job_id, (rec, attached) in self.jobs.items():
            state = "lost" if rec.state == "running" and not attached else rec.state
            live = progress.get(str(job_id)) if state == "running" else None
            done = live["done"] if live else rec.done
            failed = live["failed"] if live else rec.failed
            outstanding = live["outstanding"] if live else 0
            rate = self._job_rate.get(job_id, (0, 0, 0.0))[2] if live else 0.0
            rows[str(job_id)] = {
                "id": job_id,
                "owner": rec.owner,
                "host": rec.host,
                "function": rec.function,
                "state": state,
                "total": rec.total or done + outstanding,
                "done": done,
                "failed": failed,
                "rate": round(rate, 1),
                "started": rec.started,
                "ended": rec.ended,
                "detached": bool(rec.spool),
            }
        return rows

    def head(self) -> Row:
        """Everything but the rows: the leader's figures, the election, the failovers."""
        s = self.status or {}
        leader = self.leader
        return {
            "leader": dataclasses.asdict(leader) if leader else None,
            "standbys": max(0, self.candidates - 1),
            "failovers": list(self.failovers),
            "status_error": self.status_error,
            "heartbeat_interval": s.get("heartbeat_interval"),
            "totals": {k: s.get(k) for k in ("jobs", "queued", "running", "delivered", "failed", "tasks_per_second")},
            "written_off": s.get("written_off", {}),
            "counters": s.get("counters", {}),
            "relays": s.get("relays", {}),
        }

    # ------------------------------------------------------------------ what browsers get

    def patch(self, now: float) -> Row | None:
        """What changed since the last patch (None: nothing); it becomes what was sent."""
        nodes, jobs, head = self.node_rows(), self.job_rows(), self.head()
        out: Row = {}
        node_diff, job_diff = diff(self._sent_nodes, nodes), diff(self._sent_jobs, jobs)
        if node_diff["set"] or node_diff["del"]:
            out["nodes"] = node_diff
        if job_diff["set"] or job_diff["del"]:
            out["jobs"] = job_diff
        if head != self._sent_head:
            out["head"] = head
        if self._fresh_timeline:
            out["timeline"], self._fresh_timeline = self._fresh_timeline, []
        fresh = self.series.unsent()
        if fresh:
            out["series"] = fresh
        self._sent_nodes, self._sent_jobs, self._sent_head = nodes, jobs, head
        if not out:
            return None
        self.seq += 1
        out["seq"], out["now"] = self.seq, round(now, 3)
        return out

    def snapshot(self, now: float) -> Row:
        """What was sent so far, in one document: a new browser's starting point. Called
        right after ``patch``, so that nothing is left unsent that the snapshot lacks."""
        return {
            "seq": self.seq,
            "now": round(now, 3),
            "nodes": {"set": list(self._sent_nodes.values()), "del": []},
            "jobs": {"set": list(self._sent_jobs.values()), "del": []},
            "head": self._sent_head,
            "timeline": list(self.timeline),
            "series": list(self.series.samples),
        }


def _step(value: float | None, step: float) -> float | None:
    """``value`` to the nearest ``step`` (None: not said)."""
    return None if value is None else round(round(value / step) * step, 2)
