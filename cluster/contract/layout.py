"""The ZooKeeper layout of a cluster and the records stored in its znodes.

    /clusterd/<cluster>/agents/<node-id>        ephemeral, AgentRecord JSON
    /clusterd/<cluster>/relays/<relay-id>       ephemeral, RelayRecord JSON
    /clusterd/<cluster>/drain/<node-id>         a drain request for that agent
    /clusterd/<cluster>/coordinator/election/   kazoo Election (lock) children
    /clusterd/<cluster>/coordinator/epoch       persistent; its version is the epoch counter
    /clusterd/<cluster>/coordinator/leader      ephemeral, LeaderRecord JSON
    /clusterd/<cluster>/jobs/j-<10 digits>      persistent sequential, JobRecord JSON; its
                                                number is the job's id
    /clusterd/<cluster>/jobs/j-<...>/attached   ephemeral: the job's owning process lives

Records are decoded defensively: znode data can be garbage, truncated or written
by another version, and a reader must skip it with a warning, never crash.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, TypeVar

ROOT = "/clusterd"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_RECORD_BYTES = 64 * 1024
STATES = ("ready", "draining")
# A job's record says "running" until its owner writes how it ended; a running job whose
# owner's session is gone (no ``attached`` node) is shown "lost".
JOB_STATES = ("running", "done", "failed", "cancelled")
JOB_PREFIX = "j-"


class BadRecord(ValueError):
    """Znode data that is not a valid record."""


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def cluster_root(cluster: str) -> str:
    return f"{ROOT}/{check_name(cluster, 'cluster name')}"


def agents_path(cluster: str) -> str:
    return f"{cluster_root(cluster)}/agents"


def agent_path(cluster: str, node_id: str) -> str:
    return f"{agents_path(cluster)}/{check_name(node_id, 'node id')}"


def relays_path(cluster: str) -> str:
    return f"{cluster_root(cluster)}/relays"


def relay_path(cluster: str, relay_id: str) -> str:
    return f"{relays_path(cluster)}/{check_name(relay_id, 'relay id')}"


def drain_path(cluster: str, node_id: str) -> str:
    """A request for an agent to drain (``clusterctl drain``); the agent removes it when it leaves."""
    return f"{cluster_root(cluster)}/drain/{check_name(node_id, 'node id')}"


def coordinator_path(cluster: str) -> str:
    return f"{cluster_root(cluster)}/coordinator"


def election_path(cluster: str) -> str:
    return f"{coordinator_path(cluster)}/election"


def epoch_path(cluster: str) -> str:
    return f"{coordinator_path(cluster)}/epoch"


def leader_path(cluster: str) -> str:
    return f"{coordinator_path(cluster)}/leader"


def jobs_path(cluster: str) -> str:
    return f"{cluster_root(cluster)}/jobs"


def job_node(job_id: int) -> str:
    """The znode name of job ``job_id``: what ZooKeeper's sequential create gives it."""
    return f"{JOB_PREFIX}{job_id:010d}"


def job_id_of(name: str) -> int:
    """A job's id from its znode name, or from what a user typed (``42``, ``j-0000000042``)."""
    digits = name[len(JOB_PREFIX) :] if name.startswith(JOB_PREFIX) else name
    if not digits.isdigit() or len(digits) > 10:
        raise ValueError(f"{name!r} is not a job id (a number, as `clusterctl jobs` shows)")
    return int(digits)


def _load(data: bytes | None, what: str) -> dict[str, Any]:
    if not data:
        raise BadRecord(f"{what}: empty")
    if len(data) > MAX_RECORD_BYTES:
        raise BadRecord(f"{what}: {len(data)} bytes is too large")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise BadRecord(f"{what}: not JSON") from None
    if not isinstance(obj, dict):
        raise BadRecord(f"{what}: not a JSON object")
    return obj


R = TypeVar("R", bound="_Record")  # a record type
M = TypeVar("M", "AgentRecord", "RelayRecord")  # a member's record type

# Field annotations (strings: ``from __future__ import annotations``) -> the JSON types they accept.
_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "str": str, "float": (int, float), "dict[str, str]": dict}


def _build(cls: type[R], obj: dict[str, Any], what: str) -> R:
    """Build a record from the fields we know, checking each one's type."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in obj:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise BadRecord(f"{what}: missing {field.name!r}")
            continue
        value = obj[field.name]
        want = _TYPES[str(field.type)]
        if not isinstance(value, want) or isinstance(value, bool):
            raise BadRecord(f"{what}: field {field.name!r} has the wrong type")
        kwargs[field.name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Record:
    """A dataclass kept as JSON in a znode."""

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()


def _member(cls: type[M], data: bytes | None, what: str) -> M:
    """An agent's or a relay's record: the coordinator connects to its endpoint."""
    record = _build(cls, _load(data, what), what)
    if not record.endpoint.startswith("tcp://"):
        raise BadRecord(f"{what}: endpoint must be tcp://host:port")
    return record


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentRecord(_Record):
    node_id: str
    host: str
    endpoint: str
    workers: int
    cores: int
    memory: int
    version: str
    protocol: int
    pid: int
    started: float
    state: str = "ready"
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    relay: str = ""  # the relay the coordinator reaches it through while that relay is registered
    # Its interpreter, which its workers run: code serialized by value (the Executor's) loads only on
    # the same minor version. "" in records of releases that did not say.
    python: str = ""  # platform.python_version(), e.g. "3.11.7"
    platform: str = ""  # sysconfig.get_platform(), e.g. "linux-x86_64"
    # "<kernel boot id>/<pid namespace>/<its start in clock ticks since boot>": which process ``pid`` is,
    # so that a successor on this host can prove it dead (agents/registration.py). "" in records of
    # releases that did not say.
    process_key: str = ""

    @staticmethod
    def folder(cluster: str) -> str:
        return agents_path(cluster)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> AgentRecord:
        record = _member(cls, data, "agent record")
        if record.state not in STATES:
            raise BadRecord(f"agent record: unknown state {record.state!r}")
        if record.relay and not _NAME.match(record.relay):
            raise BadRecord("agent record: relay is not a valid relay id")
        return record

    def with_state(self, state: str) -> AgentRecord:
        return dataclasses.replace(self, state=state)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelayRecord(_Record):
    """A relay (``clusterctl relay``): the coordinator holds one connection to it, not one
    to each agent that names it, and it forwards their messages both ways."""

    node_id: str  # the relay id agents name in their ``relay`` setting
    host: str
    endpoint: str
    version: str
    protocol: int
    pid: int
    started: float
    process_key: str = ""  # as an agent's

    @staticmethod
    def folder(cluster: str) -> str:
        return relays_path(cluster)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> RelayRecord:
        return _member(cls, data, "relay record")


MemberRecord = AgentRecord | RelayRecord  # what ZooKeeper lists as members: agents, and relays


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeaderRecord(_Record):
    coordinator_id: str
    endpoint: str
    epoch: int
    host: str
    pid: int
    version: str
    protocol: int
    started: float
    curve_key: str = ""  # the client port's CURVE public key (Z85); empty when insecure

    @classmethod
    def from_bytes(cls, data: bytes | None) -> LeaderRecord:
        return _build(cls, _load(data, "leader record"), "leader record")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobRecord(_Record):
    """A job as every host sees it (``clusterctl jobs``), written by the process that owns
    it when the job starts and when it ends, never in between: live counts come from the
    leader."""

    # Its id is the number of its sequential znode (job_id_of): short, sortable, unique in
    # the cluster, and not stored here, as it is known only once the znode exists.
    owner: str
    host: str
    pid: int
    function: str  # what its tasks run: MODULE:FUNC, the shell command, or "Executor"
    state: str
    total: int  # tasks submitted; for an Executor, known when it ends
    done: int = 0  # tasks with a result, failed ones included
    failed: int = 0
    started: float  # wall-clock time.time()
    ended: float = 0.0
    version: str
    spool: str = ""  # a detached job's spool on ``host`` (its inputs and results); "" for an attached job
    # Where its holder serves the spool to other hosts while it runs, and its CURVE key ("" when insecure).
    endpoint: str = ""
    curve_key: str = ""
    error: str = ""  # why the job failed as a whole: no node could load its function

    @classmethod
    def from_bytes(cls, data: bytes | None) -> JobRecord:
        record = _build(cls, _load(data, "job record"), "job record")
        if record.state not in JOB_STATES:
            raise BadRecord(f"job record: unknown state {record.state!r}")
        return record
