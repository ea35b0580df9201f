"""Typed, frozen settings with every default in one place.

Precedence, lowest first: these defaults, a TOML file (``--config``), the
``CLUSTER_*`` environment (``CLUSTER_ZK``, ``CLUSTER_NAME`` and
``CLUSTER_<SECTION>_<FIELD>``, e.g. ``CLUSTER_AGENT_WORKERS``), then
command-line flags. A wrong key or type anywhere is a ``ConfigError`` that
names its source.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True, kw_only=True)
class Common:
    zk: str = "127.0.0.1:2181"  # ZooKeeper connect string
    cluster: str = "default"  # cluster name: the chroot under /clusterd
    keys: str = ""  # directory of CURVE keys (`clusterctl keys generate`)
    insecure: bool = False  # daemons: run without keys, on a trusted network only
    zk_auth: str = ""  # file (0600) holding "user:password" for ZooKeeper digest ACLs


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig(Common):
    node_id: str = ""  # default: the host name
    workers: str = "auto"  # "auto" = usable cores (affinity and cgroup quota), or N
    bind: str = "tcp://0.0.0.0:0"  # port 0 picks a free port; the real one is published
    advertise: str = ""  # host others use to reach us; default: the address that routes to ZooKeeper
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    relay: str = ""  # id of the relay (`clusterctl relay`) the coordinator reaches us through; "" = directly
    prefetch: int = 2  # tasks queued per worker beyond the one it runs; hides round trips
    prefetch_short: int = 16  # the same while every job it holds has tasks under 5 ms: fewer, larger messages
    heartbeat_interval: float = 0.5
    heartbeat_misses: int = 4
    drain_timeout: float = 30.0
    restart_backoff_max: float = 30.0
    zk_session_timeout: float = 10.0  # ZooKeeper drops our znode this long after we vanish
    metrics_port: int = 0  # Prometheus endpoint on the --bind host; 0 = off
    max_payload: int = 64 * 2**20  # keep equal to the coordinator's: larger frames drop the sender


@dataclasses.dataclass(frozen=True, kw_only=True)
class CoordinatorConfig(Common):
    bind: str = "tcp://0.0.0.0:0"  # the client endpoint
    advertise: str = ""
    heartbeat_interval: float = 0.5  # the shortest; stretched past heartbeat_interval x heartbeat_budget agents
    heartbeat_misses: int = 4
    heartbeat_budget: float = 4000.0  # heartbeats a second from agents (and as many to them); 0 = never stretch
    job_window: int = 10000  # most tasks a job may have queued or running at once
    max_batch: int = 256  # most tasks in one Dispatch or TaskResults message
    max_payload: int = 64 * 2**20  # bytes of one task's arguments, function or result
    client_timeout: float = 30.0  # a job whose client is silent this long is cancelled
    zk_session_timeout: float = 10.0  # a dead leader's lock is released after this; standbys then take over
    metrics_port: int = 0  # Prometheus endpoint on the --bind host; 0 = off


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelayConfig(Common):
    relay_id: str = ""  # the id agents name in their `relay` setting; default: the host name
    bind: str = "tcp://0.0.0.0:0"  # where the coordinator connects; port 0 picks a free port, published
    advertise: str = ""
    zk_session_timeout: float = 10.0  # the relay's znode goes this long after it vanishes; its agents then go direct
    metrics_port: int = 0
    max_payload: int = 64 * 2**20  # keep equal to the coordinator's


SECTIONS: dict[type, str] = {AgentConfig: "agent", CoordinatorConfig: "coordinator", RelayConfig: "relay", Common: ""}
ENV_SHARED = {
    "zk": "CLUSTER_ZK",
    "cluster": "CLUSTER_NAME",
    "keys": "CLUSTER_KEYS",
    "insecure": "CLUSTER_INSECURE",
    "zk_auth": "CLUSTER_ZK_AUTH",
}


def load(
    cls: type,
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    environ = os.environ if environ is None else environ
    section = SECTIONS[cls]
    hints = typing.get_type_hints(cls)
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
            if key not in hints or key == "frames":
                raise ConfigError(f"{path}: unknown setting {key!r} in [{section}] (known: {', '.join(sorted(hints))})")
            values[key] = _coerce(value, hints[key], f"{path}: {section}.{key}")

    for key, hint in hints.items():
        name = ENV_SHARED.get(key) or f"CLUSTER_{section.upper()}_{key.upper()}"
        if section or key in ENV_SHARED:
            if name in environ and environ[name] != "":
                values[key] = _coerce(environ[name], hint, f"environment {name}")

    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in hints:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(value, hint := hints[key], f"--{key.replace('_', '-')}")
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - guarded by the hint checks above
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
            return str(value) if isinstance(value, (str, int)) else _fail()
        if typing.get_origin(hint) is dict:
            if isinstance(value, str):
                return parse_labels(value.split(",") if value else [])
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
            raise ValueError
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def _fail() -> Any:
    raise ValueError


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"label {item!r} must look like key=value")
        labels[key.strip()] = value.strip()
    return labels
