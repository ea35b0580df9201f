"""What a run leaves on this host, found by its tag ("cdd" and the run's pid in hex, in the
name of every namespace, link, cgroup and mount it makes), and the cleanup of runs that
were SIGKILLed before they could clean up after themselves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from container import CGROUP_HIERARCHIES, remove_cgroup

PREFIX = "cdd"


def tag_of(pid: int) -> str:
    return f"{PREFIX}{pid:x}"


def _netns() -> list[str]:
    return [
        line.split()[0]
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    ]


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [m[1].split("@")[0] for m in re.finditer(r"^\d+: ([^:]+):", out, re.M)]


def _cgroups() -> list[str]:
    return [str(p) for h in CGROUP_HIERARCHIES for p in Path(f"/sys/fs/cgroup/{h}").glob(f"{PREFIX}*")]


def _mounts(tag: str) -> list[str]:
    """Mount points of the run's: its tmpfs is named after the tag, other mounts lie under a path with it."""
    fields = [line.split()[:2] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [target for source, target in fields if tag in source or tag in target]


def leftovers(tag: str) -> list[str]:
    """Everything of the run ``tag`` still on this host: namespaces, links, cgroups, mounts."""
    found = [f"netns {n}" for n in _netns() if n.startswith(tag)]
    found += [f"link {n}" for n in _links() if n.startswith(tag)]
    found += [f"cgroup {c}" for c in _cgroups() if Path(c).name.startswith(tag)]
    found += [f"mount {m}" for m in _mounts(tag)]
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sweep_dead_runs() -> list[str]:
    """Remove what runs whose process is gone left behind; what was removed."""
    names = _netns() + _links() + [Path(c).name for c in _cgroups()]
    dead = {m[0] for n in names if (m := re.match(rf"{PREFIX}([0-9a-f]+)", n)) and not _alive(int(m[1], 16))}
    removed = []
    for tag in dead:
        for cgroup in (c for c in _cgroups() if Path(c).name.startswith(tag)):
            for procs in Path(cgroup).rglob("cgroup.procs"):  # the orphaned containers: PID 1 takes the rest
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            remove_cgroup(Path(cgroup).name)
        for mount in _mounts(tag):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        for link in (n for n in _links() if n.startswith(tag)):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for ns in (n for n in _netns() if n.startswith(tag)):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        removed.append(tag)
    return removed


def interrupt_on_sigterm() -> None:
    """SIGTERM (a CI runner's cancel, `timeout`) unwinds like Ctrl-C, through every finalizer."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
