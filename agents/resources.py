"""How much CPU and memory this process may really use.

os.cpu_count() reports the host's cores, but inside a container or a systemd
slice the kernel throttles us to the cgroup quota and the cpuset. Starting one
worker per *host* core there oversubscribes the quota and every worker gets
throttled, so the worker count is derived from what we may actually use.

Every read here is best effort: a missing, unreadable or garbled file means
"no limit from that file", never an exception, because a daemon must still
start on kernels and container runtimes we have not seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

# cgroup v1 reports "unlimited" memory as PAGE_COUNTER_MAX * page size
# (9223372036854771712 on 4 KiB pages); anything this large is no real limit.
_NO_MEMORY_LIMIT = 1 << 60


@dataclass(frozen=True)
class NodeResources:
    cores: int  # logical cores on the host, as os.cpu_count() reports them
    usable_cpus: int  # cores this process may use (affinity and cgroup quota)
    memory: int  # bytes this process may use (RAM and cgroup limit)


class HostLoad:
    """What an agent's heartbeats say of its host: the 1-minute load average per usable CPU
    and the fraction of memory in use (-1 when this platform cannot tell). Sampled at most
    every ``EVERY`` seconds: heartbeats come far more often than the figures move."""

    EVERY = 2.0

    def __init__(self, cpus: int) -> None:
        self.cpus = max(1, cpus)
        self.load = self.memory = -1.0
        self._sampled = float("-inf")

    def sample(self, now: float) -> tuple[float, float]:
        if now - self._sampled >= self.EVERY:
            self._sampled = now
            try:
                self.load = round(os.getloadavg()[0] / self.cpus, 3)
            except OSError:
                self.load = -1.0
            self.memory = round(min(1.0, psutil.virtual_memory().percent / 100), 3)
        return self.load, self.memory


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_paths(proc_root: str, pid: str) -> tuple[str, dict[str, str]]:
    """Return (v2 path, {v1 controller: path}) from /proc/<pid>/cgroup."""
    v2 = "/"  # unreadable file: still look at the mount roots themselves
    v1: dict[str, str] = {}
    text = _read(Path(proc_root) / str(pid) / "cgroup") or ""
    for line in text.splitlines():
        # "hierarchy-id:controllers:path"; the path itself may contain ':'.
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        else:
            for controller in controllers.split(","):
                v1.setdefault(controller, path)
    return v2, v1


def _cgroup_dirs(mount: Path, cgroup_path: str) -> list[Path]:
    """Our cgroup dir under `mount` and each ancestor up to the mount root.

    Limits are hierarchical: a parent's quota caps all its children, so the
    effective limit is the minimum along the path. When the path does not
    exist under the mount (a container whose cgroup namespace or bind mount
    puts our own cgroup at the mount root) only the root itself is checked.
    """
    if not mount.is_dir():
        return []
    parts = [p for p in cgroup_path.split("/") if p and p not in (".", "..")]
    leaf = mount.joinpath(*parts)
    if not leaf.is_dir():
        return [mount]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _min_limit(limits: list[int | None]) -> int | None:
    real = [x for x in limits if x is not None]
    return min(real) if real else None


def _cpu_v2(d: Path) -> int | None:
    # cpu.max is "<quota|max> <period>", e.g. "150000 100000" is 1.5 CPUs.
    fields = (_read(d / "cpu.max") or "").split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except (ValueError, IndexError):
        return None
    return _ceil_cpus(quota, period)


def _cpu_v1(d: Path) -> int | None:
    try:
        quota = int(_read(d / "cpu.cfs_quota_us") or "")
        period = int(_read(d / "cpu.cfs_period_us") or "")
    except ValueError:
        return None
    return _ceil_cpus(quota, period)  # quota -1 means unlimited


def _ceil_cpus(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    # Round up: a 1.5 CPU quota can keep two workers busy 75% of the time,
    # which beats leaving half a core idle.
    return max(1, -(-quota // period))


def _affinity(pid: str) -> int:
    try:
        return len(os.sched_getaffinity(0 if pid == "self" else int(pid))) or 1
    except (AttributeError, ValueError, OSError):
        # No sched_getaffinity (macOS, Windows) or the pid is gone.
        return psutil.cpu_count(logical=True) or os.cpu_count() or 1


def cgroup_cpu_limit(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", pid: str = "self") -> int | None:
    """CPUs allowed by the cgroup quota (rounded up), or None if unlimited."""
    root = Path(cgroup_root)
    v2_path, v1 = _cgroup_paths(proc_root, pid)
    limits: list[int | None] = []
    # Hybrid hosts mount v2 at <root>/unified next to the v1 controllers, so
    # every layout is checked and the tightest limit wins.
    for mount in (root, root / "unified"):
        limits += [_cpu_v2(d) for d in _cgroup_dirs(mount, v2_path)]
    v1_path = v1.get("cpu", "/")
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        limits += [_cpu_v1(d) for d in _cgroup_dirs(root / name, v1_path)]
    return _min_limit(limits)


def _memory_value(text: str | None) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        return None  # includes v2 "max"
    return value if 0 < value < _NO_MEMORY_LIMIT else None


def cgroup_memory_limit(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", pid: str = "self") -> int | None:
    """Bytes allowed by the cgroup memory limit, or None if unlimited."""
    root = Path(cgroup_root)
    v2_path, v1 = _cgroup_paths(proc_root, pid)
    limits: list[int | None] = []
    for mount in (root, root / "unified"):
        limits += [_memory_value(_read(d / "memory.max")) for d in _cgroup_dirs(mount, v2_path)]
    for d in _cgroup_dirs(root / "memory", v1.get("memory", "/")):
        limits.append(_memory_value(_read(d / "memory.limit_in_bytes")))
    return _min_limit(limits)


def usable_cpus(
    proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", pid: str = "self", affinity: int | None = None
) -> int:
    """Cores this process may really use: min(CPU affinity, cgroup quota), >= 1.

    `affinity` overrides the sched_getaffinity count (for tests).
    """
    cpus = affinity if affinity is not None else _affinity(pid)
    quota = cgroup_cpu_limit(proc_root, cgroup_root, pid)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def usable_memory(
    proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", pid: str = "self", total: int | None = None
) -> int:
    """Bytes this process may use: min(physical RAM, cgroup memory limit).

    `total` overrides psutil's physical memory total (for tests).
    """
    memory = total if total is not None else psutil.virtual_memory().total
    limit = cgroup_memory_limit(proc_root, cgroup_root, pid)
    return min(memory, limit) if limit is not None else memory


def parse_workers(value: str | int, cpus: int) -> int:
    """Resolve a --workers option: 'auto' means one worker per usable CPU."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return cpus
    workers = 0
    if isinstance(value, int) and not isinstance(value, bool):
        workers = value  # bool is an int subclass; True must not mean 1
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        workers = int(value)
    if workers <= 0:
        raise ValueError(f"--workers must be 'auto' or a positive integer, got {value!r}")
    return workers


def detect() -> NodeResources:
    """Resources of this node as seen from this process."""
    return NodeResources(cores=os.cpu_count() or 1, usable_cpus=usable_cpus(), memory=usable_memory())
