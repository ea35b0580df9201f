"""Every message that travels over ZeroMQ, by channel, and the codes they carry.

Each message is a frozen dataclass with its kind number; codec.py turns it into frames
and back (``Message.encode``, ``decode``, re-exported here), and nothing else builds
frames. A compatible change within a protocol version only appends header fields with
defaults (docs/operations.md, "Upgrades").
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any

from cluster.contract.codec import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from cluster.contract.codec import REFUSED_KIND, check_ints, check_result_items, check_rows
from cluster.contract.codec import ZERO_COPY_MIN as ZERO_COPY_MIN
from cluster.contract.codec import Buffer as Buffer
from cluster.contract.codec import Message as Message
from cluster.contract.codec import ProtocolError as ProtocolError
from cluster.contract.codec import ProtocolVersionMismatch as ProtocolVersionMismatch
from cluster.contract.codec import decode as decode

MAX_PAYLOAD_DEFAULT = 64 * 1024 * 1024  # one task's arguments, function or result

# Task outcome codes carried in result items.
OK = 0  # the function returned; payload is the encoded result
ERROR = 1  # the function raised; payload is an error record
LOST = 2  # the worker died running it; payload is an error record
CANCELLED = 3  # the job was cancelled before the task finished
NEED_FUNCTION = 4  # worker-internal: the function blob was not cached
# Worker to agent only: the job's function could not be loaded (an error record with no
# pickled exception, which the agent reads). It is the node's and the job's, not the task's:
# the agent reports it once with a LoadFailed and the task runs elsewhere. A worker answers
# so only to an agent that says it knows (options[LOAD_FAILURES]).
LOAD_FAILED = 5
LOAD_FAILURES = "load_failures"  # the option an agent sets on the tasks it gives its workers
# The SubmitJob option of a client that reads JobFailure.LOAD_FAILED. To a client without
# it, a job no node can load fails task by task, as it did before there was the code.
TAKES_LOAD_FAILURES = "takes_load_failures"
STATUSES = frozenset({OK, ERROR, LOST, CANCELLED, NEED_FUNCTION, LOAD_FAILED})
OUTCOMES = {OK: "ok", ERROR: "error", LOST: "lost"}  # names for logs and metrics


class Refusal(enum.IntEnum):
    """Why a peer refused a message (``Refused.code``): receivers switch on this; the
    reason is for people."""

    UNSPECIFIED = 0  # a peer of a release before codes
    NOT_LEADER = 1  # coordinator -> client: it does not lead (yet, or any more)
    PROTOCOL_VERSION = 2  # any peer: it speaks another protocol version
    FENCED = 3  # agent -> coordinator: its epoch is older than one the agent obeys


class JobFailure(enum.IntEnum):
    """Why the coordinator cannot run a job (``JobFailed.code``)."""

    UNSPECIFIED = 0
    UNKNOWN_JOB = 1  # it has no such job (it restarted under the same address): submit the job again
    TOO_LARGE = 2  # the function is larger than the payload limit
    WINDOW_EXCEEDED = 3  # the client sent more tasks than the job's window
    PYTHON_VERSION = 4  # its code was serialized by a Python no registered agent runs (options["python"])
    MISSING_BUNDLE = 5  # options["bundles"] names a bundle the coordinator does not hold: send it first
    LOAD_FAILED = 6  # no node that could run it can load its function (``JobFailed.errors`` says why, by node)


# ---------------------------------------------------------------- any channel


@dataclasses.dataclass(frozen=True)
class Heartbeat(Message):
    """Liveness, both ways. ``epoch`` fences deposed coordinators; ``free`` is
    the sender's spare capacity (agents) or 0; ``interval``, from a coordinator to its
    agents, the seconds between beats from now on, both ways (0: unchanged; older
    coordinators send none); ``agents``, from a coordinator to a client, how many agents
    it has (-1: not said). From an agent, its host's ``load`` (the 1-minute load average
    per usable CPU) and ``memory`` (the fraction of its memory in use); -1: not said."""

    KIND = 1
    sender: str
    epoch: int
    free: int = 0
    interval: float = 0.0
    agents: int = -1
    load: float = -1.0
    memory: float = -1.0

    def validate(self) -> None:
        if self.interval and not 0.01 <= self.interval <= 60:
            raise ProtocolError("Heartbeat: interval out of range")
        if self.load != -1.0 and not 0.0 <= self.load <= 1e6:
            raise ProtocolError("Heartbeat: load out of range")
        if self.memory != -1.0 and not 0.0 <= self.memory <= 1.0:
            raise ProtocolError("Heartbeat: memory out of range")


@dataclasses.dataclass(frozen=True)
class Refused(Message):
    """A request that will not be served: ``code`` (a Refusal) says why, ``reason`` says it
    to a person. Its kind and fields are the same in every protocol version, so that a peer
    speaking another version can read why it was refused."""

    KIND = REFUSED_KIND
    reason: str
    code: int = Refusal.UNSPECIFIED


# ------------------------------------------------------- client <-> coordinator


@dataclasses.dataclass(frozen=True)
class SubmitJob(Message):
    """Opens a job. frames = [function blob]. ``options`` holds retries and the
    result format; unknown keys are ignored so clients can evolve."""

    KIND = 10
    job_id: str
    digest: str
    options: dict[str, Any]

    def validate(self) -> None:
        if len(self.frames) != 1:
            raise ProtocolError("SubmitJob carries exactly one function frame")
        if not self.job_id or len(self.job_id) > 128:
            raise ProtocolError("SubmitJob: bad job id")


@dataclasses.dataclass(frozen=True)
class JobAccepted(Message):
    KIND = 11
    job_id: str
    window: int  # the most tasks the client may have without a result
    workers: int  # workers connected now, so a client can say it is waiting
    epoch: int
    max_payload: int  # the largest arguments frame a task may have


@dataclasses.dataclass(frozen=True)
class SubmitTasks(Message):
    """frames[i] holds the arguments of task ``indices[i]``."""

    KIND = 12
    job_id: str
    indices: list[int]

    def validate(self) -> None:
        check_ints(self.indices, "SubmitTasks.indices")
        if len(self.indices) != len(self.frames):
            raise ProtocolError("SubmitTasks: one frame per index")


@dataclasses.dataclass(frozen=True)
class TaskResults(Message):
    """items = [[index, status], ...]; frames[i] is item i's payload. ``started``: tasks a
    worker has started since the last message (appended: clients of earlier releases
    ignore it; its tasks' results, when in ``items``, come after it)."""

    KIND = 13
    job_id: str
    items: list[list[Any]]
    started: list[int] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        check_rows(self.items, 2, "TaskResults.items")
        for row in self.items:
            check_ints(row, "TaskResults.items")
        if len(self.items) != len(self.frames):
            raise ProtocolError("TaskResults: one frame per item")
        check_ints(self.started, "TaskResults.started")


@dataclasses.dataclass(frozen=True)
class CancelJob(Message):
    """The client is done with a job (finished or cancelled): drop its state."""

    KIND = 14
    job_id: str


@dataclasses.dataclass(frozen=True)
class CancelTasks(Message):
    """The client no longer wants these tasks. ``stop``: a running one's worker is killed
    (``TaskFuture.stop()``); without it, running ones finish and their results are
    dropped (``Future.cancel()``, which CPython refuses for a running call; appended:
    clients of earlier releases always stop)."""

    KIND = 16
    job_id: str
    indices: list[int]
    stop: bool = True

    def validate(self) -> None:
        check_ints(self.indices, "CancelTasks.indices")


@dataclasses.dataclass(frozen=True)
class StatusRequest(Message):
    KIND = 17
    detail: bool = False


@dataclasses.dataclass(frozen=True)
class StatusReply(Message):
    """The coordinator's view: leader, epoch, agents, jobs, queue and counters."""

    KIND = 18
    status: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class JobFailed(Message):
    """The coordinator cannot run this job at all: ``code`` (a JobFailure) says why."""

    KIND = 15
    job_id: str
    reason: str
    code: int = JobFailure.UNSPECIFIED
    # LOAD_FAILED: [[node, exception type, message, traceback], ...] (appended: clients of
    # earlier releases read the reason alone)
    errors: list[list[str]] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        check_load_errors(self.errors, "JobFailed.errors")


def check_load_errors(rows: list[Any], what: str) -> None:
    check_rows(rows, 4, what)
    if not all(type(v) is str for row in rows for v in row):
        raise ProtocolError(f"{what}: each item must be [node, type, message, traceback]")


@dataclasses.dataclass(frozen=True)
class LoadFailed(Message):
    """A node cannot load a job's function: ``error`` is the exception's type, ``message``
    its first line, ``traceback`` the whole when short (else ""). Agent to coordinator,
    with its epoch, once per job: the agent has dropped the job's tasks and takes no more
    of them; the coordinator queues them again for other nodes and answers with EndJob.
    Coordinator to the job's client (epoch 0), once per node: the job goes on elsewhere,
    or fails with JobFailure.LOAD_FAILED when no node is left. A peer of an earlier
    release drops it as an unknown kind (an agent sends it only to a coordinator whose
    Hello says ``takes_load_failures``)."""

    KIND = 39
    job_id: str
    node: str
    error: str
    message: str
    traceback: str = ""
    epoch: int = 0

    def row(self) -> list[str]:
        return [self.node, self.error, self.message, self.traceback]


def check_digests(digests: object, what: str) -> None:
    """Bundle digests: lowercase sha256 hex, as cluster/client/bundle.py names them."""
    if not isinstance(digests, list) or not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests):
        raise ProtocolError(f"{what}: bundle digests are sha256 hex")


_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Bundle(Message):
    """A shipped directory (cluster/client/bundle.py), named by the sha256 of its archive:
    frames = [the archive]. Client to coordinator before the SubmitJob whose
    ``options["bundles"]`` names it; coordinator to agent, with its epoch, before the
    first JobSpec there that names it, once per connection."""

    KIND = 19
    digest: str
    epoch: int = 0

    def validate(self) -> None:
        check_digests([self.digest], "Bundle.digest")
        if len(self.frames) != 1:
            raise ProtocolError("Bundle carries exactly one archive frame")


# -------------------------------------------------------- coordinator <-> agent


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """A coordinator introduces itself to an agent. ``takes_back``: it accepts
    ReturnTasks; ``takes_output``: it accepts TaskOutput; ``takes_load_failures``: it
    accepts LoadFailed (older coordinators do not know these messages)."""

    KIND = 20
    coordinator_id: str
    epoch: int
    heartbeat_interval: float
    takes_back: bool = False
    takes_output: bool = False
    takes_load_failures: bool = False

    def validate(self) -> None:
        if not 0.01 <= self.heartbeat_interval <= 60:
            raise ProtocolError("Hello: heartbeat interval out of range")


@dataclasses.dataclass(frozen=True)
class Welcome(Message):
    """The agent's answer to Hello. ``held`` lists [job, index, attempt] of the
    tasks it already holds (queued, running, or finished and unsent), which use
    up part of ``capacity`` until their results arrive."""

    KIND = 21
    node_id: str
    epoch: int
    workers: int
    capacity: int
    held: list[list[Any]]
    draining: bool

    def validate(self) -> None:
        check_rows(self.held, 3, "Welcome.held")


@dataclasses.dataclass(frozen=True)
class JobSpec(Message):
    """Sent to an agent once per job before its first task. frames = [function blob]."""

    KIND = 22
    epoch: int
    job_id: str
    digest: str
    options: dict[str, Any]

    def validate(self) -> None:
        if len(self.frames) != 1:
            raise ProtocolError("JobSpec carries exactly one function frame")


@dataclasses.dataclass(frozen=True)
class Dispatch(Message):
    """Tasks for an agent. tasks = [[index, attempt], ...]; frames[i] = arguments."""

    KIND = 23
    epoch: int
    job_id: str
    tasks: list[list[int]]

    def validate(self) -> None:
        check_rows(self.tasks, 2, "Dispatch.tasks")
        for row in self.tasks:
            check_ints(row, "Dispatch.tasks")
        if len(self.tasks) != len(self.frames):
            raise ProtocolError("Dispatch: one frame per task")


@dataclasses.dataclass(frozen=True)
class Results(Message):
    """Finished tasks. items = [[job, index, attempt, status], ...]; frames[i] = payload.
    ``capacity``, when not 0, replaces the one the agent gave in its Welcome: it asks
    for deeper queues while its jobs' tasks are short. ``started`` = [[job, index,
    attempt], ...]: tasks a worker was seen running, each told once (appended:
    coordinators of earlier releases ignore it)."""

    KIND = 24
    epoch: int
    items: list[list[Any]]
    capacity: int = 0
    started: list[list[Any]] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        check_result_items(self.items, self.frames, "Results")
        check_rows(self.started, 3, "Results.started")
        for job, index, attempt in self.started:
            if type(job) is not str or type(index) is not int or type(attempt) is not int:
                raise ProtocolError("Results.started: each item must be [job, index, attempt]")


@dataclasses.dataclass(frozen=True)
class EndJob(Message):
    """Coordinator to agent: the job is over; drop queued tasks and stop running ones."""

    KIND = 25
    epoch: int
    job_id: str


@dataclasses.dataclass(frozen=True)
class DropTasks(Message):
    """Coordinator to agent: forget these tasks; with ``stop``, kill the workers of any
    that are running, else let them finish (appended: earlier agents always stop)."""

    KIND = 27
    epoch: int
    job_id: str
    indices: list[int]
    stop: bool = True

    def validate(self) -> None:
        check_ints(self.indices, "DropTasks.indices")


@dataclasses.dataclass(frozen=True)
class ReturnTasks(Message):
    """Agent to coordinator: tasks it holds and has not started, to be queued again.
    Its credit shrank after they were sent (a job of long or new tasks among short
    ones), and another agent may start them sooner. items = [[job, index, attempt],
    ...]; ``capacity`` is the agent's from now on."""

    KIND = 28
    epoch: int
    items: list[list[Any]]
    capacity: int

    def validate(self) -> None:
        check_rows(self.items, 3, "ReturnTasks.items")
        for job, *numbers in self.items:
            if type(job) is not str:
                raise ProtocolError("ReturnTasks.items: job id must be a string")
            check_ints(numbers, "ReturnTasks.items")


@dataclasses.dataclass(frozen=True)
class RelayAgents(Message):
    """Coordinator to a relay (agent id empty): connect to these agents, [[node id,
    endpoint], ...], and stop connecting to those. The coordinator repeats ``connect``
    with each Hello until the agent answers, so a lost one costs a retry, not an agent."""

    KIND = 29
    epoch: int
    connect: list[list[str]]
    disconnect: list[list[str]]

    def validate(self) -> None:
        for name in ("connect", "disconnect"):
            rows = getattr(self, name)
            check_rows(rows, 2, f"RelayAgents.{name}")
            if not all(type(node) is str and type(ep) is str and ep.startswith("tcp://") for node, ep in rows):
                raise ProtocolError(f"RelayAgents.{name}: each item must be [node id, tcp:// endpoint]")


@dataclasses.dataclass(frozen=True)
class RelayBeat(Message):
    """Relay to coordinator (agent id empty), in answer to each coordinator heartbeat: the
    relay is alive, and so are these agents, heard since its last RelayBeat. Their own
    heartbeats stop at the relay; the relay passes the coordinator's on to each of them.
    Also sent at once, with ``lost``, when agents' connections to the relay close."""

    KIND = 36
    epoch: int
    agents: list[str]
    lost: list[str] = dataclasses.field(default_factory=list)  # agents whose connection to the relay closed

    def validate(self) -> None:
        if not all(type(a) is str for a in (*self.agents, *self.lost)):
            raise ProtocolError("RelayBeat: node ids")


@dataclasses.dataclass(frozen=True)
class ForgetBundles(Message):
    """Agent to coordinator: these bundles are to leave its cache (agents/bundles.py), so
    send them again before a job that names them. The coordinator answers with the same
    message once it has forgotten them; only then does the agent remove them, so a JobSpec
    sent before the answer still finds its bundles there."""

    KIND = 37
    epoch: int
    digests: list[str]

    def validate(self) -> None:
        check_digests(self.digests, "ForgetBundles.digests")


@dataclasses.dataclass(frozen=True)
class Draining(Message):
    """Agent to coordinator: send nothing new; what is held will still finish."""

    KIND = 26
    node_id: str


# ------------------------------------------------------------- agent <-> worker


@dataclasses.dataclass(frozen=True)
class WorkerReady(Message):
    KIND = 30
    slot: int
    pid: int


@dataclasses.dataclass(frozen=True)
class RunTasks(Message):
    """Tasks of one job for a worker to run in order. tasks = [[index, attempt, seq], ...];
    frames = [function blob or b"" when the worker has it cached, arguments of each task].
    ``seq`` is what the worker writes to its running marker (agents/marker.py)."""

    KIND = 33
    job_id: str
    digest: str
    options: dict[str, Any]
    tasks: list[list[int]]

    def validate(self) -> None:
        check_rows(self.tasks, 3, "RunTasks.tasks")
        for row in self.tasks:
            check_ints(row, "RunTasks.tasks")
        if not self.tasks or len(self.frames) != len(self.tasks) + 1:
            raise ProtocolError("RunTasks carries [function, arguments per task]")


@dataclasses.dataclass(frozen=True)
class TasksDone(Message):
    """Finished tasks in the order they ran. items = [[job, index, attempt, status], ...]."""

    KIND = 34
    items: list[list[Any]]

    def validate(self) -> None:
        check_result_items(self.items, self.frames, "TasksDone")
        for _, _, _, status in self.items:
            if status not in STATUSES:
                raise ProtocolError("TasksDone: unknown status")


@dataclasses.dataclass(frozen=True)
class SkipTasks(Message):
    """Agent to worker: do not start these (by seq); they were cancelled or moved to another worker."""

    KIND = 35
    seqs: list[int]

    def validate(self) -> None:
        check_ints(self.seqs, "SkipTasks.seqs")


@dataclasses.dataclass(frozen=True)
class TaskOutput(Message):
    """What a task wrote to its stdout or stderr: ``stream`` is "out" or "err", frames =
    [the bytes]. Worker to agent, agent to coordinator, coordinator to the job's client,
    each hop unchanged, and on each channel before the task's result (agents/capture.py).
    A peer of an earlier release drops it as an unknown kind."""

    KIND = 38
    job_id: str
    index: int
    attempt: int
    stream: str

    def validate(self) -> None:
        if self.stream not in OUTPUT_STREAMS:
            raise ProtocolError("TaskOutput: stream must be 'out' or 'err'")
        if len(self.frames) != 1:
            raise ProtocolError("TaskOutput carries exactly one data frame")


OUTPUT_STREAMS = ("out", "err")


# ------------------------------------------------- reader <-> detached job's holder


@dataclasses.dataclass(frozen=True)
class ReadSpool(Message):
    """A reader on another host to a detached job's holder (cluster/client/holder.py):
    the rows of ``what`` ("results" or "output") recorded after seq ``after``; of task
    ``task`` only, when it is not -1."""

    KIND = 43
    job: int
    what: str
    after: int
    task: int = -1

    def validate(self) -> None:
        if self.what not in SPOOL_TABLES:
            raise ProtocolError("ReadSpool: what must be 'results' or 'output'")


@dataclasses.dataclass(frozen=True)
class SpoolRows(Message):
    """The holder's answer: rows = [[seq, index, status or stream], ...] with frames[i]
    row i's body, at most a page of them; ``state``: the job's ("running" while it runs);
    ``error``: why there are none (no such job here), "" otherwise."""

    KIND = 44
    job: int
    rows: list[list[Any]]
    state: str
    error: str = ""

    def validate(self) -> None:
        check_rows(self.rows, 3, "SpoolRows.rows")
        for seq, index, kind in self.rows:
            if type(seq) is not int or type(index) is not int or type(kind) not in (int, str):
                raise ProtocolError("SpoolRows.rows: each row must be [seq, index, status or stream]")
        if len(self.rows) != len(self.frames):
            raise ProtocolError("SpoolRows: one frame per row")


SPOOL_TABLES = ("results", "output")


# ----------------------------------------------------------- agent <-> template


@dataclasses.dataclass(frozen=True)
class SpawnWorker(Message):
    """Agent to its template (agents/template.py): fork a clean worker for ``slot``. Its end
    of the worker's channel and the slot's running marker travel with the message, as
    descriptors (SCM_RIGHTS)."""

    KIND = 40
    slot: int


@dataclasses.dataclass(frozen=True)
class WorkerSpawned(Message):
    """Template to agent: the worker for ``slot`` runs as ``pid``, in a process group of its own."""

    KIND = 41
    slot: int
    pid: int


@dataclasses.dataclass(frozen=True)
class WorkerExited(Message):
    """Template to agent: a worker it forked has exited; ``code`` as subprocess gives it
    (the exit status, or minus the signal that killed it)."""

    KIND = 42
    pid: int
    code: int


# Agents of release 0.1.0 sent one RunTask per task and expected one TaskDone back; workers
# still answer them, because a package upgrade under a running agent restarts its
# workers from the new code.
@dataclasses.dataclass(frozen=True)
class RunTask(Message):
    """frames = [function blob or b"" when the worker has it cached, arguments]."""

    KIND = 31
    job_id: str
    index: int
    attempt: int
    digest: str
    options: dict[str, Any]

    def validate(self) -> None:
        if len(self.frames) != 2:
            raise ProtocolError("RunTask carries [function, arguments]")


@dataclasses.dataclass(frozen=True)
class TaskDone(Message):
    KIND = 32
    job_id: str
    index: int
    attempt: int
    status: int

    def validate(self) -> None:
        if self.status not in STATUSES or len(self.frames) != 1:
            raise ProtocolError("TaskDone: bad status or payload")
