"""Every message that travels over ZeroMQ, and the only code that builds frames.

A message is ``[header, *payload]``. The header is msgpack ``[version, kind,
field, field, ...]`` with the fields of a frozen dataclass in declaration order;
the payload frames are opaque bytes (pickled functions, arguments, results) that
only workers and clients ever deserialize. ``decode`` checks the version, the
kind, the field count and every field's type, and raises ``ProtocolError`` on
anything else, so a hostile or confused peer can never crash a loop.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import operator
import threading
import typing
from collections.abc import Callable
from typing import Any, ClassVar

import msgpack

from cluster.contract.version import PROTOCOL_VERSION


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


class VersionMismatch(ProtocolError):
    def __init__(self, theirs: object):
        super().__init__(f"peer speaks protocol version {theirs!r}, this side speaks {PROTOCOL_VERSION}")
        self.theirs = theirs


# Task outcome codes carried in result items.
OK = 0  # the function returned; payload is the encoded result
ERROR = 1  # the function raised; payload is an error record
LOST = 2  # the worker died running it; payload is an error record
CANCELLED = 3  # the job was cancelled before the task finished
NEED_FUNCTION = 4  # worker-internal: the function blob was not cached
STATUSES = frozenset({OK, ERROR, LOST, CANCELLED, NEED_FUNCTION})
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


MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_PAYLOAD_DEFAULT = 64 * 1024 * 1024  # one task's arguments, function or result
# Frames this large travel by reference (pyzmq's own copy threshold); smaller ones are
# cheaper to copy than to track.
ZERO_COPY_MIN = 64 * 1024

# A payload frame: bytes, or a view of a received message that large payloads are passed on as.
Buffer = bytes | bytearray | memoryview

_REGISTRY: dict[int, type[Message]] = {}


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of all messages. ``frames`` holds the opaque payload frames."""

    KIND: ClassVar[int] = -1
    frames: tuple[Buffer, ...] = dataclasses.field(default=(), kw_only=True)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.KIND in _REGISTRY:
            raise TypeError(f"message kind {cls.KIND} registered twice")
        _REGISTRY[cls.KIND] = cls

    def encode(self) -> list[Buffer]:
        header = _packer().pack([PROTOCOL_VERSION, self.KIND, *_values(type(self))(self)])
        return [header, *self.frames]


_local = threading.local()


def _packer() -> msgpack.Packer:
    """A Packer per thread: msgpack.packb builds one per call (a third of a small
    message's encoding), and a Packer must not be shared between threads."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def _values_of(cls: type) -> Callable[[Message], tuple[Any, ...]]:
    """The header field values of a message, in declaration order, as one call."""
    names = [f.name for f in _header_fields(cls)]
    if len(names) > 1:
        return operator.attrgetter(*names)
    return (lambda msg: (getattr(msg, names[0]),)) if names else (lambda msg: ())


# Each of these is computed once per message class. Typed as plain callables: functools.cache's
# wrapper asks for Hashable arguments, and mypy does not take a dataclass's class object for one.
_values: Callable[[type], Callable[[Message], tuple[Any, ...]]] = functools.cache(_values_of)


def decode(frames: list[bytes] | list[Any]) -> Message:
    """Turn received frames into a message, or raise ProtocolError."""
    if not frames:
        raise ProtocolError("empty message")
    raw = frames[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("header too large")
    if not isinstance(raw, _BUFFERS):
        raw = raw.bytes
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not msgpack: {exc.__class__.__name__}") from None
    if not isinstance(header, list) or len(header) < 2:
        raise ProtocolError("header is not a [version, kind, ...] list")
    version, kind, *values = header
    if version != PROTOCOL_VERSION and kind != Refused.KIND:
        raise VersionMismatch(version)  # Refused alone reads the same in every version: see there
    cls = _REGISTRY.get(kind) if isinstance(kind, int) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    fields = _header_fields(cls)
    # Compatible evolution within a protocol version: a newer peer may append fields
    # (older peers ignore them), and a field added later has a default, so messages
    # from older peers that lack it still decode. See docs/operations.md, upgrades.
    if len(values) < _required(cls):
        raise ProtocolError(f"{cls.__name__}: expected {len(fields)} fields, got {len(values)}")
    values = values[: len(fields)]
    for field, value, ok in zip(fields, values, _checks(cls)):
        if not ok(value):
            raise ProtocolError(f"{cls.__name__}.{field.name}: bad value of type {type(value).__name__}")
    payload = tuple(_payload(f) for f in frames[1:])
    msg = cls(*values, frames=payload)
    check = getattr(msg, "validate", None)
    if check is not None:
        check()
    return msg


# What is not one of these is a zmq.Frame. Never hasattr(frame, "bytes"): that reads the
# property, which copies the whole frame (a megabyte per payload per hop).
_BUFFERS = (bytes, bytearray, memoryview)


def _payload(frame: Any) -> Buffer:
    """A received payload frame as bytes, or, when large, as a view of the received
    message (``view.obj`` is the zmq.Frame): daemons forward large payloads without
    copying them (loop.send_frames)."""
    if isinstance(frame, _BUFFERS):
        return frame
    view: Buffer = frame.buffer if len(frame) >= ZERO_COPY_MIN else frame.bytes
    return view


def _header_fields_of(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.name != "frames")


_header_fields: Callable[[type], tuple[dataclasses.Field[Any], ...]] = functools.cache(_header_fields_of)


def _required_of(cls: type) -> int:
    """How many leading header fields a sender must include: those without a default."""
    return sum(
        1 for f in _header_fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


_required: Callable[[type], int] = functools.cache(_required_of)


def _checks_of(cls: type) -> tuple[Callable[[Any], bool], ...]:
    """One type check per header field, chosen once per message class: decoding runs
    for every message on every hop (a heartbeat from each of 5,000 agents a second)."""
    hints = typing.get_type_hints(cls)
    return tuple(_check(hints[f.name]) for f in _header_fields(cls))


_checks: Callable[[type], tuple[Callable[[Any], bool], ...]] = functools.cache(_checks_of)


def _check(hint: Any) -> Callable[[Any], bool]:
    # msgpack yields exact types, so ``type(v) is`` is enough, and keeps bool out of int.
    if hint is float:
        return lambda v: type(v) is float or type(v) is int
    origin = typing.get_origin(hint) or hint
    if origin in (int, str, bytes, bool, list, dict):
        return lambda v: type(v) is origin
    return lambda v: False  # a field type this module does not know is a bug here, not the peer's


def _rows(value: list[Any], arity: int, what: str) -> None:
    """Items lists are lists of fixed-arity rows; check them once, here."""
    for row in value:
        if not isinstance(row, list) or len(row) != arity:
            raise ProtocolError(f"{what}: each item must be a list of {arity}")


def _result_items(items: list[Any], frames: tuple[Buffer, ...], what: str) -> None:
    """[[job, index, attempt, status], ...] with one payload frame each."""
    for row in items:  # unrolled: this runs for every result on every hop
        if type(row) is not list or len(row) != 4:
            raise ProtocolError(f"{what}.items: each item must be a list of 4")
        job, index, attempt, status = row
        if type(job) is not str:
            raise ProtocolError(f"{what}.items: job id must be a string")
        if type(index) is not int or type(attempt) is not int or type(status) is not int:
            raise ProtocolError(f"{what}.items: expected integers")
    if len(items) != len(frames):
        raise ProtocolError(f"{what}: one frame per item")


def _ints(row: list[Any], what: str) -> None:
    for v in row:
        if type(v) is not int:  # msgpack gives exact types; this also keeps bool out
            raise ProtocolError(f"{what}: expected integers")


# ---------------------------------------------------------------- any channel


@dataclasses.dataclass(frozen=True)
class Heartbeat(Message):
    """Liveness, both ways. ``epoch`` fences deposed coordinators; ``free`` is
    the sender's spare capacity (agents) or 0; ``interval``, from a coordinator to its
    agents, the seconds between beats from now on, both ways (0: unchanged; older
    coordinators send none); ``agents``, from a coordinator to a client, how many agents
    it has (-1: not said)."""

    KIND = 1
    sender: str
    epoch: int
    free: int = 0
    interval: float = 0.0
    agents: int = -1

    def validate(self) -> None:
        if self.interval and not 0.01 <= self.interval <= 60:
            raise ProtocolError("Heartbeat: interval out of range")


@dataclasses.dataclass(frozen=True)
class Refused(Message):
    """A request that will not be served: ``code`` (a Refusal) says why, ``reason`` says it
    to a person. Its kind and fields are the same in every protocol version, so that a peer
    speaking another version can read why it was refused."""

    KIND = 2
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
        _ints(self.indices, "SubmitTasks.indices")
        if len(self.indices) != len(self.frames):
            raise ProtocolError("SubmitTasks: one frame per index")


@dataclasses.dataclass(frozen=True)
class TaskResults(Message):
    """items = [[index, status], ...]; frames[i] is item i's payload."""

    KIND = 13
    job_id: str
    items: list[list[Any]]

    def validate(self) -> None:
        _rows(self.items, 2, "TaskResults.items")
        for row in self.items:
            _ints(row, "TaskResults.items")
        if len(self.items) != len(self.frames):
            raise ProtocolError("TaskResults: one frame per item")


@dataclasses.dataclass(frozen=True)
class CancelJob(Message):
    """The client is done with a job (finished or cancelled): drop its state."""

    KIND = 14
    job_id: str


@dataclasses.dataclass(frozen=True)
class CancelTasks(Message):
    """The client no longer wants these tasks (``Future.cancel()``)."""

    KIND = 16
    job_id: str
    indices: list[int]

    def validate(self) -> None:
        _ints(self.indices, "CancelTasks.indices")


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


# -------------------------------------------------------- coordinator <-> agent


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """A coordinator introduces itself to an agent. ``takes_back``: it accepts
    ReturnTasks (older coordinators do not know the message)."""

    KIND = 20
    coordinator_id: str
    epoch: int
    heartbeat_interval: float
    takes_back: bool = False

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
        _rows(self.held, 3, "Welcome.held")


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
        _rows(self.tasks, 2, "Dispatch.tasks")
        for row in self.tasks:
            _ints(row, "Dispatch.tasks")
        if len(self.tasks) != len(self.frames):
            raise ProtocolError("Dispatch: one frame per task")


@dataclasses.dataclass(frozen=True)
class Results(Message):
    """Finished tasks. items = [[job, index, attempt, status], ...]; frames[i] = payload.
    ``capacity``, when not 0, replaces the one the agent gave in its Welcome: it asks
    for deeper queues while its jobs' tasks are short."""

    KIND = 24
    epoch: int
    items: list[list[Any]]
    capacity: int = 0

    def validate(self) -> None:
        _result_items(self.items, self.frames, "Results")


@dataclasses.dataclass(frozen=True)
class EndJob(Message):
    """Coordinator to agent: the job is over; drop queued tasks and stop running ones."""

    KIND = 25
    epoch: int
    job_id: str


@dataclasses.dataclass(frozen=True)
class DropTasks(Message):
    """Coordinator to agent: forget these tasks; stop any that are running."""

    KIND = 27
    epoch: int
    job_id: str
    indices: list[int]

    def validate(self) -> None:
        _ints(self.indices, "DropTasks.indices")


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
        _rows(self.items, 3, "ReturnTasks.items")
        for job, *numbers in self.items:
            if type(job) is not str:
                raise ProtocolError("ReturnTasks.items: job id must be a string")
            _ints(numbers, "ReturnTasks.items")


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
            _rows(rows, 2, f"RelayAgents.{name}")
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
        _rows(self.tasks, 3, "RunTasks.tasks")
        for row in self.tasks:
            _ints(row, "RunTasks.tasks")
        if not self.tasks or len(self.frames) != len(self.tasks) + 1:
            raise ProtocolError("RunTasks carries [function, arguments per task]")


@dataclasses.dataclass(frozen=True)
class TasksDone(Message):
    """Finished tasks in the order they ran. items = [[job, index, attempt, status], ...]."""

    KIND = 34
    items: list[list[Any]]

    def validate(self) -> None:
        _result_items(self.items, self.frames, "TasksDone")
        for _, _, _, status in self.items:
            if status not in STATUSES:
                raise ProtocolError("TasksDone: unknown status")


@dataclasses.dataclass(frozen=True)
class SkipTasks(Message):
    """Agent to worker: do not start these (by seq); they were cancelled or moved to another worker."""

    KIND = 35
    seqs: list[int]

    def validate(self) -> None:
        _ints(self.seqs, "SkipTasks.seqs")


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
