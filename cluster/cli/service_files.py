"""The files a service install writes, as text: the hardened systemd unit of each
role, the sysusers.d line for the `clusterd` user, and the node's TOML config, which
is validated by loading it back the way the daemon will; the example configs of
configs/, every setting with its help; and what a unit's sandboxing hides from its
service, read back from the unit's text. No file or system is touched here;
cluster/cli/install.py checks the system, writes the files and runs systemd.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
import textwrap
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from cluster.contract import config
from cluster.dashboard.settings import DashboardConfig

ROLES: dict[str, type[config.Common]] = {
    "agent": config.AgentConfig,
    "coordinator": config.CoordinatorConfig,
    "relay": config.RelayConfig,
    "dashboard": DashboardConfig,
}
USER = "clusterd"
DEFAULT_EXEC = "/opt/clusterd/venv/bin/clusterctl"
SYSUSERS = Path("/etc/sysusers.d/clusterd.conf")
MARK = "# Written by `clusterctl"  # uninstall removes only config files that start with it


def unit_name(role: str) -> str:
    return f"cluster-{role}.service"


def unit_path(role: str) -> Path:
    return Path("/etc/systemd/system") / unit_name(role)


def config_path(role: str) -> Path:
    return Path("/etc/clusterd") / f"{role}.toml"


# ------------------------------------------------------------------ rendering
# systemd/*.service in the source tree are render_unit(role) with the defaults;
# tests/test_systemd.py keeps them equal, so the units are reviewed in one place.

HARDENING = """\
# Hardening (`systemd-analyze security cluster-ROLE`). Read-only system and no homes:
# the only writable places are the state directory (/var/lib/clusterd, also HOME),
# a private /tmp and /dev/shm. Add paths with `systemctl edit`: ReadWritePaths=/srv/data
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
StateDirectory=clusterd
WorkingDirectory=%S/clusterd
UMask=0077
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
PrivateMounts=yes
RemoveIPC=yes
# Netlink: glibc's getaddrinfo asks the kernel for local addresses through it.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
# A filtered call fails with EPERM instead of killing the process (a task's library
# probing for a syscall must not take its worker down).
SystemCallErrorNumber=EPERM
"""

ROLE_UNIT = {
    "agent": dict(
        head="# clusterd node agent. `clusterctl agent install` writes this unit and\n"
        "# /etc/clusterd/agent.toml (see configs/agent.toml).",
        description="clusterd node agent (one worker per usable core)",
        stop="# SIGTERM to the agent only: it drains (its workers finish their tasks), then exits 0.\n"
        "KillMode=mixed\n"
        "# Above the agent's 30 s drain timeout.\n"
        "TimeoutStopSec=45\n",
        extra="# Workers run user code: no MemoryDenyWriteExecute (JITs such as numba need W+X\n"
        "# memory). GPU nodes: `systemctl edit cluster-agent`, PrivateDevices=no.\n",
    ),
    "coordinator": dict(
        head="# clusterd coordinator. Run it on two or three hosts: one leads, the others stand by.\n"
        "# `clusterctl coordinator install` writes this unit and /etc/clusterd/coordinator.toml.",
        description="clusterd coordinator",
        stop="TimeoutStopSec=15\n",
        # It never unpickles user payloads, so no JIT; checked with kernel MDWE, pyzmq included.
        # libzmq's I/O thread calls sched_setscheduler and aborts on EPERM: that one call stays.
        extra="MemoryDenyWriteExecute=yes\nSystemCallFilter=~@resources\nSystemCallFilter=sched_setscheduler\n",
    ),
    "relay": dict(
        head="# clusterd relay: the coordinator reaches the agents that name it through it, over\n"
        "# one connection. `clusterctl relay install` writes this unit and /etc/clusterd/relay.toml.",
        description="clusterd relay",
        stop="TimeoutStopSec=15\n",
        # It forwards payloads without reading them, as the coordinator does (libzmq too).
        extra="MemoryDenyWriteExecute=yes\nSystemCallFilter=~@resources\nSystemCallFilter=sched_setscheduler\n",
    ),
    "dashboard": dict(
        head="# clusterd web dashboard: a client of the cluster, never in the coordinator's loop.\n"
        "# `clusterctl dashboard install` writes this unit and /etc/clusterd/dashboard.toml.",
        description="clusterd web dashboard",
        stop="TimeoutStopSec=15\n",
        # It reads ZooKeeper and the leader's status and serves a page: no user code, no JIT.
        extra="MemoryDenyWriteExecute=yes\nSystemCallFilter=~@resources\n",
    ),
}


def render_unit(role: str, exec_path: str = DEFAULT_EXEC) -> str:
    r = ROLE_UNIT[role]
    return (
        f"{r['head']}\n[Unit]\nDescription={r['description']}\n"
        "Documentation=file:///opt/clusterd/README.md\n"
        "Wants=network-online.target\nAfter=network-online.target\n\n"
        "[Service]\nType=notify\nNotifyAccess=main\n"
        f"ExecStart={_exec_word(exec_path)} {role} --config {config_path(role)}\n"
        f"User={USER}\nGroup={USER}\n{r['stop']}"
        "Restart=on-failure\nRestartSec=500ms\nWatchdogSec=10\n"
        f"{HARDENING.replace('ROLE', role)}{r['extra']}\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def _exec_word(path: str) -> str:
    # '%' and '$' are specifier and variable expansion in unit files; spaces need quotes.
    word = path.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\]", word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_sysusers() -> str:
    # The same text whichever role writes it, so the second role finds it unchanged.
    return (
        "# Written by `clusterctl agent|coordinator|relay install`: the user the clusterd daemons\n"
        "# run as, created by systemd-sysusers (removed with the last role; the user stays).\n"
        f'u {USER} - "clusterd daemons" /var/lib/clusterd\n'
    )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        items = (
            f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', k) else _toml_value(k)} = {_toml_value(v)}"
            for k, v in sorted(value.items())
        )
        return "{ " + ", ".join(items) + " }" if value else "{}"
    # JSON string escapes are valid TOML; TOML also wants DEL escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def render_config(role: str, cfg: config.Common, given: set[str]) -> str:
    """TOML with `zk`, `cluster` and every setting given, named as cluster/contract/config.py reads them."""
    shared = [f.name for f in fields(config.Common)]
    top = [k for k in shared if k in ("zk", "cluster") or k in given]
    section = [f.name for f in fields(cfg) if f.name not in shared and f.name in given]
    lines = [
        f"{MARK} {role} install`; run it again to change this file",
        f"# (every setting: configs/{role}.toml)." if role in EXAMPLE_HEAD else f"# (every setting: {role} --help).",
        "",
    ]
    lines += [f"{k} = {_toml_value(getattr(cfg, k))}" for k in top]
    lines += ["", f"[{role}]"] + [f"{k} = {_toml_value(getattr(cfg, k))}" for k in section]
    return "\n".join(lines) + "\n"


# configs/ROLE.toml in the source tree are render_example(role): every setting with its
# help and default, so the examples cannot drift from cluster/contract/config.py
# (tests/test_cli_options.py keeps them equal).

EXAMPLE_HEAD = {
    "agent": "# Example agent config: clusterctl agent --config configs/agent.toml",
    "coordinator": "# Example coordinator config: clusterctl coordinator --config configs/coordinator.toml",
    "relay": "# Example relay config: clusterctl relay --config configs/relay.toml\n"
    "# Run one per rack (or per few hundred agents) when a fleet reaches thousands of nodes:\n"
    "# the coordinator then holds one connection per relay instead of one per agent.\n"
    "# The keys directory is the coordinator's: the relay stands in for it toward its agents.",
}
EXAMPLE_VALUES: dict[str, dict[str, object]] = {"agent": {"labels": {"rack": "r1"}}, "relay": {"relay_id": "rack-12"}}


def render_example(role: str) -> str:
    """Every setting of the role: its help as a comment, then the line, commented out at
    its default (zk, cluster and the EXAMPLE_VALUES are set)."""
    cls = ROLES[role]
    shared = {f.name for f in fields(config.Common)}
    lines = [
        EXAMPLE_HEAD[role],
        f"# Every setting is also a flag (`clusterctl {role} --help`, with the same text) and an environment",
        f"# variable: CLUSTER_{cls.section.upper()}_<NAME>, and CLUSTER_ZK, CLUSTER_NAME, CLUSTER_KEYS,",
        "# CLUSTER_INSECURE, CLUSTER_ZK_AUTH. Precedence: this file < environment < flags.",
    ]
    for f in fields(cls):
        if f.name not in shared and f"[{role}]" not in lines:
            lines += ["", f"[{role}]"]
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[operator]
        value = EXAMPLE_VALUES.get(role, {}).get(f.name, default)
        lines += ["", *textwrap.wrap(f.metadata["help"], 88, initial_indent="# ", subsequent_indent="# ")]
        hidden = f.name not in ("zk", "cluster") and value == default
        lines.append(f"{'# ' if hidden else ''}{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ validation


def build_config(role: str, flags: dict[str, Any]) -> tuple[config.Common, str]:
    """Settings from the flags alone (not this shell's CLUSTER_* environment: the file
    must say everything), checked, rendered, and loaded back the way the daemon will."""
    given = {k for k, v in flags.items() if v is not None and v is not False}
    cfg = config.load(ROLES[role], None, flags, environ={})
    if not cfg.keys and not cfg.insecure:
        raise ValueError(
            "give --keys DIR (see `clusterctl keys generate`) or --insecure: the daemon refuses to start without one"
        )
    if cfg.keys and cfg.insecure:
        raise ValueError("--keys and --insecure contradict each other: give one")
    if isinstance(cfg, config.AgentConfig):
        w = cfg.workers.strip().lower()
        if w != "auto" and not (w.isascii() and w.isdigit() and int(w) > 0):
            raise ValueError(f"--workers must be 'auto' or a positive integer, got {cfg.workers!r}")
    if isinstance(cfg, config.DaemonConfig) and not cfg.bind.startswith("tcp://"):
        raise ValueError(f"--bind must look like tcp://HOST:PORT, got {cfg.bind!r}")
    if isinstance(cfg, config.DaemonConfig) and cfg.metrics_port > 65535:
        raise ValueError(f"--metrics-port must be a port number (up to 65535; 0 = off), got {cfg.metrics_port}")
    text = render_config(role, cfg, given)
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as tmp:
        tmp.write(text)
        tmp.flush()
        if config.load(ROLES[role], tmp.name, environ={}) != cfg:  # pragma: no cover - a rendering bug
            raise ValueError(f"internal error: the rendered {role} config does not load back as given")
    return cfg, text


def default_exec() -> str:
    # The clusterctl beside this interpreter: a venv's own, not whatever is on PATH.
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "clusterctl")


def check_exec(path: str, given: bool, root: Optional[Path]) -> str:
    """An absolute path to an executable file; where the unit lets it run is install's pre-flight."""
    if not os.path.isabs(path):
        raise ValueError(f"--exec must be an absolute path, got {path!r}")
    if not (given and root) and not os.access(path, os.X_OK):
        hint = "" if given else " (run the clusterctl of the venv to install, or pass --exec PATH)"
        raise ValueError(f"{path} is not an executable file{hint}")
    return path


# ------------------------------------------------------------------ sandboxing

# What each setting hides from the service (systemd.exec(5)); whether a unit has it is read
# from the unit's own text, so the pre-flight checks exactly what will run.
PROTECT_HOME = ("/home", "/root", "/run/user")  # ProtectHome=yes (or tmpfs): empty or inaccessible
PRIVATE_TMP = ("/tmp", "/var/tmp")  # PrivateTmp=yes: the service gets empty ones of its own
YES = ("yes", "true", "on", "1")


@dataclass(frozen=True)
class Sandbox:
    user: str  # User=
    program: str  # ExecStart='s program
    hidden: dict[str, str]  # a path the service cannot see -> the unit's line that hides it


def sandbox(unit: str) -> Sandbox:
    """The service's user, program and hidden paths, from a unit's [Service] lines."""
    settings = [line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith(("#", ";"))]
    user, program, hidden = "root", "", {}
    for key, value in settings:
        key, value = key.strip(), value.strip()
        if key == "User":
            user = value
        elif key == "ExecStart" and value:
            # Unit quoting is the shell's for what render_unit writes; %% and $$ are escapes.
            program = shlex.split(value)[0].lstrip("-@:+!").replace("%%", "%").replace("$$", "$")
        elif key == "ProtectHome" and value in (*YES, "tmpfs"):
            hidden.update(dict.fromkeys(PROTECT_HOME, f"{key}={value}"))
        elif key == "PrivateTmp" and value in YES:
            hidden.update(dict.fromkeys(PRIVATE_TMP, f"{key}={value}"))
        elif key == "InaccessiblePaths":
            for path in value.split():
                hidden[path.lstrip("-+").rstrip("/") or "/"] = f"{key}={path}"
    return Sandbox(user, program, hidden)


def hidden_by(sandbox: Sandbox, path: str) -> tuple[str, str] | None:
    """(the hidden path, the unit's line) that ``path`` lies under, or None."""
    for hidden, line in sandbox.hidden.items():
        if path == hidden or path.startswith(hidden.rstrip("/") + "/"):
            return hidden, line
    return None
