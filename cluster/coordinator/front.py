"""The coordinator's face to its clients: jobs as a client sees them. No sockets and no
clock: each request takes ``now`` and returns the replies to send.

A job is accepted with a window (the most tasks it may have without a result) and a
payload limit; tasks beyond the window or larger than the limit are refused; a job whose
client stops beating for ``client_timeout`` is cancelled, and its agents told to drop it.
Tasks' output goes straight to their client, ahead of their results. A node that cannot
load a job's function refuses it: the client is told once per node, and the job fails
when no node that could run it is left (``on_load_failed``).
The tasks themselves are the scheduler's. Shipped directories (``Bundles``) come before
the jobs that name them and are kept while a job needs them.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence

from cluster.contract import payload, wire
from cluster.contract.config import CoordinatorConfig
from cluster.coordinator.actions import Action, ToAgents, ToClient
from cluster.coordinator.directory import AgentDirectory
from cluster.coordinator.pythons import minor
from cluster.coordinator.rate import Throughput
from cluster.coordinator.scheduler import Job, Scheduler

log = logging.getLogger("cluster.coordinator")

RATE_WINDOW = 60.0  # `clusterctl status` reports tasks/s over the last minute
NOTHING: Sequence[Action] = ()  # the usual answer to SubmitTasks, without a list for each


class ClientFront:
    def __init__(
        self,
        cfg: CoordinatorConfig,
        scheduler: Scheduler,
        directory: AgentDirectory,
        coordinator_id: str,
        bad: Callable[[bytes, str], None],
    ) -> None:
        self.scheduler = scheduler
        self.directory = directory  # the routes to agents, and the epoch
        self.coordinator_id = coordinator_id
        self.max_payload = cfg.max_payload
        self.max_batch = cfg.max_batch
        self.job_window = cfg.job_window
        self.client_timeout = cfg.client_timeout
        self._bad = bad  # counts and logs a message dropped as unexpected
        self.counters: collections.Counter[str] = collections.Counter()
        self.throughput = Throughput(RATE_WINDOW)
        self.bundles = Bundles(keep=cfg.client_timeout)

    # -------------------------------------------------------------- requests

    def on_submit_job(self, identity: bytes, msg: wire.SubmitJob, now: float) -> Sequence[Action]:
        limit = self.max_payload
        if len(msg.frames[0]) > limit:
            reason = f"the function is {_mib(len(msg.frames[0]))}; the limit is {_mib(limit)}"
            return [ToClient(wire.JobFailed(msg.job_id, reason, wire.JobFailure.TOO_LARGE), identity)]
        python = msg.options.get("python")  # a new job's: a client taking its job back keeps it
        fresh = msg.job_id not in self.scheduler.jobs
        if isinstance(python, str) and python and fresh and not self.scheduler.pythons.runs(python):
            refusal = self._no_agent_runs(python)
            if refusal is not None:
                log.info("job %s refused: %s", msg.job_id, refusal)
                return [ToClient(wire.JobFailed(msg.job_id, refusal, wire.JobFailure.PYTHON_VERSION), identity)]
        named = msg.options.get("bundles", [])
        try:
            wire.check_digests(named, "options.bundles")
        except wire.ProtocolError as exc:
            return [ToClient(wire.JobFailed(msg.job_id, str(exc), wire.JobFailure.MISSING_BUNDLE), identity)]
        missing = self.bundles.missing(named)
        if missing:
            reason = f"bundle {missing[0][:12]} is not here: send it before the job"
            return [ToClient(wire.JobFailed(msg.job_id, reason, wire.JobFailure.MISSING_BUNDLE), identity)]
        self.bundles.use(msg.job_id, named, now)
        options = dict(msg.options, max_payload=limit)  # workers check results against it
        job = self.scheduler.add_job(msg.job_id, identity, msg.frames[0], msg.digest, options, now)
        asked = msg.options.get("window")
        job.window = min(self.job_window, asked) if isinstance(asked, int) and asked > 0 else self.job_window
        workers = sum(a.workers for a in self.scheduler.agents.values() if not a.draining)
        accepted = wire.JobAccepted(job.job_id, job.window, workers, self.directory.epoch, limit)
        return [ToClient(accepted, identity)]

    def _no_agent_runs(self, python: str) -> str | None:
        """Why no agent can load code serialized by Python ``python``; None while a registered agent
        may (one not connected yet, too), or none is registered at all: the job waits for one."""
        versions = collections.Counter(record.python for record in self.directory.records.values())
        if not versions or any(not v or minor(v) == python for v in versions):
            return None
        agents = ", ".join(f"{v} ({n} agent{'' if n == 1 else 's'})" for v, n in sorted(versions.items()))
        return (
            f"its functions were serialized by value by Python {python} (the client's), whose bytecode "
            f"only Python {python} can load; the agents run Python {agents}"
        )

    def on_submit_tasks(self, identity: bytes, msg: wire.SubmitTasks, now: float) -> Sequence[Action]:
        job = self.scheduler.jobs.get(msg.job_id)
        if job is None:
            failed = wire.JobFailed(msg.job_id, "unknown job (the coordinator changed?)", wire.JobFailure.UNKNOWN_JOB)
            return [ToClient(failed, identity)]
        if len(job.tasks) + len(msg.indices) > job.window:
            self._bad(identity, f"job {msg.job_id} exceeds its window of {job.window} tasks")
            failed = wire.JobFailed(msg.job_id, "window exceeded", wire.JobFailure.WINDOW_EXCEEDED)
            return [ToClient(failed, identity)]
        job.client, job.last_seen = identity, now
        limit = self.max_payload
        if any(len(f) > limit for f in msg.frames):  # only a client that skipped its own check
            fits = []
            for index, frame in zip(msg.indices, msg.frames):
                if len(frame) <= limit:
                    fits.append((index, frame))
                else:
                    why = f"arguments are {_mib(len(frame))}; the limit is {_mib(limit)}"
                    job.outbox.append((index, wire.ERROR, payload.failure("PayloadTooLarge", why)))
            self.scheduler.add_tasks(job, [i for i, _ in fits], tuple(f for _, f in fits))
            return NOTHING
        self.scheduler.add_tasks(job, msg.indices, msg.frames)
        return NOTHING

    def on_bundle(self, identity: bytes, msg: wire.Bundle, now: float) -> Sequence[Action]:
        """Keep a shipped directory for the job that follows; one over the limit, or whose
        archive is not what its digest names, is dropped (that job then fails)."""
        if msg.digest in self.bundles:
            return NOTHING
        data = msg.frames[0]
        if len(data) > self.max_payload:
            self._bad(identity, f"bundle {msg.digest[:12]} is {_mib(len(data))}; the limit is {_mib(self.max_payload)}")
        elif hashlib.sha256(data).hexdigest() != msg.digest:
            self._bad(identity, f"bundle {msg.digest[:12]}: its archive has another digest")
        else:
            self.bundles.put(msg.digest, data, now)
        return NOTHING

    def on_cancel_job(self, identity: bytes, msg: wire.CancelJob, now: float) -> Sequence[Action]:
        return self.end_job(msg.job_id, now)

    def on_cancel_tasks(self, identity: bytes, msg: wire.CancelTasks, now: float) -> Sequence[Action]:
        out: list[Action] = []
        for node_id, indices in self.scheduler.cancel_tasks(msg.job_id, msg.indices).items():
            route = self.directory.route_to(node_id)
            if route is not None:
                drop = wire.DropTasks(self.directory.epoch, msg.job_id, indices, msg.stop)
                out.append(ToAgents(drop.encode(), [route]))
        return out

    def on_heartbeat(self, identity: bytes, msg: wire.Heartbeat, now: float) -> Sequence[Action]:
        for job in self.scheduler.jobs.values():
            if job.client == identity:
                job.last_seen = now
        beat = wire.Heartbeat(self.coordinator_id, self.directory.epoch, agents=len(self.directory.peers))
        return [ToClient(beat, identity)]

    def end_job(self, job_id: str, now: float) -> Sequence[Action]:
        """Forget a job, and tell the agents that hold its function to drop it."""
        self.bundles.release(job_id, now)
        routes = [r for r in map(self.directory.route_to, self.scheduler.end_job(job_id)) if r is not None]
        if not routes:
            return NOTHING
        return [ToAgents(wire.EndJob(self.directory.epoch, job_id).encode(), routes)]

    def step_down(self) -> None:
        """A newer leader owns the cluster now; our jobs are resubmitted to it by their clients."""
        for job_id in list(self.scheduler.jobs):
            self.scheduler.end_job(job_id)
        self.bundles.clear()

    def on_task_output(self, node_id: str, msg: wire.TaskOutput) -> Sequence[Action]:
        """A running task's output, forwarded to its client as it came (its bytes are never
        read here), if the client asked for output and the task's current attempt runs on
        that agent. It comes before the task's result, which waits in the job's outbox."""
        job = self.scheduler.jobs.get(msg.job_id)
        task = job.tasks.get(msg.index) if job is not None else None
        if job is None or task is None or task.attempt != msg.attempt or task.node != node_id:
            self.counters["dropped_output"] += 1
            return NOTHING
        if not job.options.get("output"):
            return NOTHING
        return [ToClient(msg, job.client)]

    # --------------------------------------------------------- load failures

    def on_load_failed(self, node_id: str, msg: wire.LoadFailed, now: float) -> Sequence[Action]:
        """An agent cannot load a job's function and has dropped the job: its EndJob says
        that nothing more of the job comes to it. The tasks it held run elsewhere; the
        client hears of each node once, and the job fails when no node is left to run it."""
        route = self.directory.route_to(node_id)
        out: list[Action] = [ToAgents(wire.EndJob(self.directory.epoch, msg.job_id).encode(), [route])] if route else []
        refusal = wire.LoadFailed(msg.job_id, node_id, msg.error, msg.message, msg.traceback)
        job = self.scheduler.jobs.get(msg.job_id)
        if job is None or not self.scheduler.refuse(node_id, msg.job_id, refusal.row()):
            return out
        log.warning("job %s: agent %s cannot load its function: %s: %s", msg.job_id, node_id, msg.error, msg.message)
        if self._loadable_somewhere(job):
            return [*out, ToClient(refusal, job.client)]
        return [*out, *self._fail_unloadable(job, now)]

    def _loadable_somewhere(self, job: Job) -> bool:
        """Whether a node that has not refused the job may still run it: a registered agent
        (connected or not yet) on the job's Python, that is not draining. A node that joins
        later is tried too, while the job is open."""
        agents, records = self.scheduler.agents, self.directory.records
        for node_id in records.keys() | agents.keys():
            if node_id in job.refused:
                continue
            slot, record = agents.get(node_id), records.get(node_id)
            if slot is not None and slot.draining:
                continue
            python = minor(record.python) if record is not None else slot.python if slot is not None else ""
            if not (job.python and python and python != job.python):
                return True
        return False

    def _fail_unloadable(self, job: Job, now: float) -> Sequence[Action]:
        errors = list(job.refused.values())
        _, kind, message, _ = errors[0]
        nodes = ", ".join(sorted(job.refused))
        if not job.options.get(wire.TAKES_LOAD_FAILURES):
            # A client of an earlier release: each task fails with the error, as it did; those
            # it sends later fail at the next tick. The job stays open until the client ends it.
            self.scheduler.fail_tasks(job, payload.failure(kind, f"{message} (on {nodes})"))
            return NOTHING
        reason = f"no node can load its function: {kind}: {message} (on {nodes})"
        log.warning("job %s failed: %s", job.job_id, reason)
        self.counters["jobs_unloadable"] += 1
        failed = wire.JobFailed(job.job_id, reason, wire.JobFailure.LOAD_FAILED, errors)
        return [ToClient(failed, job.client), *self.end_job(job.job_id, now)]

    # ----------------------------------------------------------------- timers

    def tick(self, now: float) -> Sequence[Action]:
        """Sample the delivery rate, cancel the jobs of clients silent for too long, and
        fail the jobs that every node left has refused (the others left or drain)."""
        self.throughput.sample(now, self.scheduler.counters["delivered"])
        self.bundles.expire(now)
        cutoff = now - self.client_timeout
        out: list[Action] = []
        for job in [j for j in self.scheduler.jobs.values() if j.last_seen < cutoff]:
            log.warning("job %s: client silent for %.0f s; cancelling it", job.job_id, self.client_timeout)
            self.counters["clients_timed_out"] += 1
            out += self.end_job(job.job_id, now)
        if self.scheduler.refusing:
            for job in [j for j in self.scheduler.jobs.values() if j.refused and not self._loadable_somewhere(j)]:
                out += self._fail_unloadable(job, now)
        return out

    # --------------------------------------------------------------- results

    def deliver(self, send: Callable[[wire.Message, bytes], bool]) -> None:
        """Send each client its results, up to ``max_batch`` a message. ``send`` is the loop's
        (not an action): a send that fails keeps the rest for the next turn, as the client
        is gone or slow; it reconnects or times out."""
        size = self.max_batch
        for job in list(self.scheduler.outboxes()):
            while job.outbox or job.started:
                chunk = job.outbox[:size]
                items = [[i, s] for i, s, _ in chunk]
                msg = wire.TaskResults(job.job_id, items, job.started, frames=tuple(f for _, _, f in chunk))
                if not send(msg, job.client):
                    break
                del job.outbox[:size]
                job.started = []


@dataclasses.dataclass
class _Held:
    data: wire.Buffer
    jobs: set[str]
    last_used: float


class Bundles:
    """Shipped directories by digest, each from the Bundle its client sends before the
    first job naming it until ``keep`` seconds after the last such job ended (a client's
    next job often names it too). Agents get them from here (service.Coordinator)."""

    def __init__(self, keep: float) -> None:
        self.keep = keep
        self._held: dict[str, _Held] = {}

    def __contains__(self, digest: str) -> bool:
        return digest in self._held

    def __len__(self) -> int:
        return len(self._held)

    def put(self, digest: str, data: wire.Buffer, now: float) -> None:
        self._held[digest] = _Held(data, set(), now)

    def get(self, digest: str) -> wire.Buffer:
        return self._held[digest].data

    def missing(self, digests: Iterable[str]) -> list[str]:
        return [d for d in digests if d not in self._held]

    def use(self, job_id: str, digests: Iterable[str], now: float) -> None:
        for digest in digests:
            held = self._held[digest]
            held.jobs.add(job_id)
            held.last_used = now

    def release(self, job_id: str, now: float) -> None:
        for held in self._held.values():
            if job_id in held.jobs:
                held.jobs.discard(job_id)
                held.last_used = now

    def expire(self, now: float) -> None:
        cutoff = now - self.keep
        for digest in [d for d, h in self._held.items() if not h.jobs and h.last_used < cutoff]:
            del self._held[digest]

    def clear(self) -> None:
        self._held.clear()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
