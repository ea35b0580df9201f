"""Typed, frozen settings, each declared once with its default and its help text.

Every field is a setting three ways: a TOML key (``--config``; the shared ones at the
top level, the others in the daemon's table), an environment variable
(``CLUSTER_ZK``, ``CLUSTER_NAME`` and ``CLUSTER_<SECTION>_<FIELD>``, e.g.
``CLUSTER_AGENT_WORKERS``) and a command-line flag, which cluster/cli/options.py
generates from the field with the help text given here. Precedence, lowest first:
these defaults, the TOML file, the environment, the flags. A wrong key or type
anywhere is a ``ConfigError`` that names its source.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from cluster.contract import wire

T = TypeVar("T")


class ConfigError(ValueError):
    pass


@overload
def setting(default: T, help: str, *, flag: str = "", metavar: str = "") -> T: ...


@overload
def setting(*, factory: Callable[[], T], help: str, flag: str = "", metavar: str = "") -> T: ...


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    flag: str = "",
    metavar: str = "",
) -> Any:
    """A field with its help text; ``flag`` names its option when ``--field-name`` does not
    fit (``--id`` for ``relay_id``), ``metavar`` the kind of value it takes."""
    metadata = {"help": help, "flag": flag, "metavar": metavar}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Common:
    section: ClassVar[str] = ""  # the TOML table and environment prefix of the settings below Common's

    zk: str = setting("127.0.0.1:2181", "ZooKeeper connect string, e.g. zk1:2181,zk2:2181,zk3:2181.")
    cluster: str = setting("default", "Cluster name: all its state lives under /clusterd/NAME in ZooKeeper.")
    keys: str = setting("", "Directory of CURVE keys (`clusterctl keys generate`).", metavar="DIR")
    insecure: bool = setting(False, "Run without CURVE keys: on a trusted network only.")
    zk_auth: str = setting("", "File (0600) holding user:password for ZooKeeper digest ACLs.", metavar="FILE")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DaemonConfig(Common):
    """What the coordinator, the agent and the relay all have."""

    bind: str = setting(
        "tcp://0.0.0.0:0",
        "Endpoint to listen on; port 0 picks a free port, and the real one is published in ZooKeeper.",
        metavar="tcp://HOST:PORT",
    )
    advertise: str = setting(
        "", "Host others use to reach this daemon; default: the local address that routes to ZooKeeper.", metavar="HOST"
    )
    zk_session_timeout: float = setting(
        10.0,
        "Seconds ZooKeeper keeps this daemon's znode after it vanishes: then a standby coordinator "
        "takes the lead, a relay's agents are reached directly, an agent's tasks go elsewhere.",
    )
    metrics_port: int = setting(0, "Serve Prometheus metrics on this port of the bind host; 0 = off.")
    max_payload: int = setting(
        wire.MAX_PAYLOAD_DEFAULT,
        "Bytes of one task's arguments, function or result, at most; keep it equal on every daemon "
        "(a larger frame drops its sender).",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeartbeatConfig(DaemonConfig):
    """The coordinator and its agents watch each other with heartbeats (the relay forwards them)."""

    heartbeat_interval: float = setting(
        0.5,
        "Seconds between heartbeats: the coordinator's shortest (past heartbeat_budget it stretches them), "
        "an agent's until a coordinator sets it.",
    )
    heartbeat_misses: int = setting(4, "Heartbeats missed before the peer is lost (silent for interval x misses).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig(HeartbeatConfig):
    section: ClassVar[str] = "agent"

    node_id: str = setting("", "Unique node id; default: the host name.")
    workers: str = setting("auto", "Worker processes: auto (the usable cores, by CPU affinity and cgroup quota) or N.")
    labels: dict[str, str] = setting(
        factory=dict, help="A label of this node; repeatable.", flag="--label", metavar="KEY=VALUE"
    )
    relay: str = setting(
        "",
        "Id of the relay (`clusterctl relay`) the coordinator reaches this agent through; empty: directly.",
        metavar="ID",
    )
    prefetch: int = setting(2, "Tasks queued per worker beyond the one it runs: hides round trips.")
    prefetch_short: int = setting(
        16, "Tasks queued per worker while every job it holds has tasks under 5 ms: fewer, larger messages."
    )
    drain_timeout: float = setting(30.0, "Seconds a drain waits for the tasks its workers hold.")
    restart_backoff_max: float = setting(30.0, "Seconds at most between restarts of a worker that keeps dying.")
    work_dir: str = setting(
        "",
        "Directory for the jobs' private working and temporary directories, each removed when its job ends; "
        "empty: a new directory under the system's temporary directory, removed when the agent stops.",
        metavar="DIR",
    )
    bundle_cache_bytes: int = setting(
        4 * 2**30,
        "Bytes of shipped directories (`submit --ship`) kept unpacked in work_dir/bundles, at most: past it "
        "the least recently used that no job here uses are removed; a larger one is refused.",
    )
    bundle_max_age: float = setting(
        86400.0, "Seconds a shipped directory that no job here uses is kept after its last use."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CoordinatorConfig(HeartbeatConfig):
    section: ClassVar[str] = "coordinator"

    heartbeat_budget: float = setting(
        4000.0,
        "Heartbeats a second from agents, at most: past heartbeat_interval x budget agents the interval "
        "stretches; 0 = never.",
    )
    job_window: int = setting(10000, "Most tasks a job may have queued or running at once.")
    max_batch: int = setting(256, "Most tasks in one Dispatch or TaskResults message.")
    client_timeout: float = setting(30.0, "Seconds of silence after which a client's job is cancelled.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelayConfig(DaemonConfig):
    section: ClassVar[str] = "relay"

    relay_id: str = setting("", "The id agents name with --relay; default: the host name.", flag="--id", metavar="ID")


C = TypeVar("C", bound=Common)

ENV_SHARED = {
    "zk": "CLUSTER_ZK",
    "cluster": "CLUSTER_NAME",
    "keys": "CLUSTER_KEYS",
    "insecure": "CLUSTER_INSECURE",
    "zk_auth": "CLUSTER_ZK_AUTH",
}


def settings(cls: type[Common]) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def flag(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def env_var(cls: type[Common], name: str) -> str:
    return ENV_SHARED.get(name) or f"CLUSTER_{cls.section.upper()}_{name.upper()}"


def load(
    cls: type[C],
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    environ = os.environ if environ is None else environ
    section = cls.section
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in settings(cls)}
    values: dict[str, Any] = {}

    if config_file:
        path = Path(config_file)
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key in ENV_SHARED:
            if key in doc:
                values[key] = _coerce(doc[key], hints[key], f"{path}: {key}")
        table = doc.get(section, {}) if section else {}
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"{path}: unknown setting {key!r} in [{section}] (known: {', '.join(sorted(known))})")
            values[key] = _coerce(value, hints[key], f"{path}: {section}.{key}")

    for key in known:
        name = env_var(cls, key)
        if (section or key in ENV_SHARED) and environ.get(name, "") != "":
            values[key] = _coerce(environ[name], hints[key], f"environment {name}")

    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(value, hints[key], flag(known[key]))
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise ConfigError(str(exc)) from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if hint in (int, float):
            if isinstance(value, bool):
                raise ValueError
            out = hint(value)
            if out < 0:
                raise ValueError
            return out
        if hint is str:
            if isinstance(value, (str, int)):
                return str(value)
            raise ValueError
        if typing.get_origin(hint) is dict:
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
            if isinstance(value, str):
                value = value.split(",") if value else []
            if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
                return parse_labels(list(value))  # repeated --label flags, or "k=v,k2=v2"
            raise ValueError
    except ConfigError:
        raise
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"label {item!r} must look like key=value")
        labels[key.strip()] = value.strip()
    return labels
