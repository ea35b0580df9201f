"""A node: systemd as PID 1 in a systemd-nspawn container whose root is an overlay of this
host's own / (the host's files, copy-on-write), in the node's network namespace.

The overlay's upper layer (the node's "disk") lives in a tmpfs on this host, so what is
installed survives a power-off and the next boot, and goes with the run. Each boot runs in
a private mount namespace (the overlay and nspawn's /run never reach the host) and in a
cgroup of its own in both hierarchies this host has (hybrid v1 + v2): nspawn's
``--keep-unit`` would otherwise use fixed names that clash between runs. We reach inside
with ``nsenter`` (there is no machined or D-Bus on the host) and through /proc/PID/root.
See /work/shared/SYSTEMD-CONTAINERS.md for why each step is there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from helpers import wait_for
from network import Link

CGROUP_HIERARCHIES = ("systemd", "unified")

# Runs inside the boot's private mount namespace: $1 the node's disk, $2 its name, $3 its netns handle.
BOOT = r"""
set -e
DISK=$1 NAME=$2 R=$1/root
mkdir -p "$DISK/upper" "$DISK/work" "$R"
first=$([ -e "$DISK/upper/etc/machine-id" ] && echo no || echo yes)
mount -t overlay overlay -o "lowerdir=/,upperdir=$DISK/upper,workdir=$DISK/work" "$R"
if [ $first = yes ]; then
  rm -rf "$R"/dev/* "$R"/.dockerenv           # nspawn refuses a populated /dev
  rm -rf "$R"/etc/systemd/system/*            # the host's enabled units must not boot here
  ln -s /dev/null "$R/etc/systemd/system/console-getty.service"
  systemd-id128 new > "$R/etc/machine-id"
  echo "$NAME" > "$R/etc/hostname"            # the node id clusterd takes by default
fi
touch "$DISK/netns"; mount --bind "$3" "$DISK/netns"   # a handle that outlives the /run below
mount -t tmpfs -o mode=755 tmpfs /run                  # nspawn's state stays in this namespace
exec systemd-nspawn -q -D "$R" -M "$NAME" --register=no --keep-unit --network-namespace-path="$DISK/netns" \
     --link-journal=no --console=read-only -b
"""


def cannot_boot() -> str:
    """Why this host cannot boot nodes; "" when it can."""
    missing = [tool for tool in ("systemd-nspawn", "nsenter", "unshare", "ip") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        return f"booting nodes needs root and {', '.join(missing) or 'nothing more'} (make deploy-test installs them)"
    return ""


def _join_cgroup(group: str) -> None:
    for hierarchy in CGROUP_HIERARCHIES:
        Path(f"/sys/fs/cgroup/{hierarchy}/{group}/cgroup.procs").write_text(str(os.getpid()))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """helpers.wait_for, with the tier's argument order."""
    return wait_for(predicate, timeout, interval, what)


class Container:
    def __init__(self, name: str, link: Link, disk: Path, cgroup: str):
        self.name, self.link, self.disk, self.cgroup = name, link, disk, cgroup
        self.launcher: subprocess.Popen | None = None
        self.pid = 0  # the container's PID 1, as this host sees it
        self.boots = 0

    @property
    def address(self) -> str:
        return self.link.address

    def boot(self, timeout: float = 60.0) -> float:
        """Power on and wait until systemd is up (running or degraded); the seconds it took."""
        start = time.monotonic()
        self.disk.mkdir(parents=True, exist_ok=True)
        for hierarchy in CGROUP_HIERARCHIES:
            Path(f"/sys/fs/cgroup/{hierarchy}/{self.cgroup}").mkdir(exist_ok=True)
        self.boots += 1
        console = open(self.disk.parent / f"{self.name}.console.log", "ab")
        self.launcher = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", BOOT, "boot", str(self.disk), self.name]
            + [self.link.netns_path],
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _join_cgroup(self.cgroup),
        )
        console.close()
        self.pid = wait_until(self._find_init, timeout, f"{self.name}'s PID 1")
        wait_until(
            lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"),
            timeout,
            f"{self.name}'s systemd to be up",
        )
        return time.monotonic() - start

    def _find_init(self) -> int:
        """The launcher's descendant whose innermost pid is 1; 0 while there is none (or it died)."""
        if self.launcher is None or self.launcher.poll() is not None:
            raise AssertionError(f"{self.name} did not boot: {self.console()[-2000:]}")
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            nspid = re.search(r"^NSpid:\s+(.*)$", text, re.M)
            if nspid and nspid[1].split()[-1] == "1" and len(nspid[1].split()) > 1 and self._descends(text):
                return int(status.parent.name)
        return 0

    def _descends(self, status: str) -> bool:
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M)[1])
        assert self.launcher is not None
        return ppid == self.launcher.pid or _parent(ppid) == self.launcher.pid

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120.0, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """A command inside, in every namespace of the container (as root)."""
        res = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(argv)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """Where a path inside the running container is, seen from this host."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def copy_in(self, source: Path, inside: str) -> None:
        dest = self.path(inside)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest)

    def poweroff(self, timeout: float = 60.0) -> None:
        """``systemctl poweroff`` inside and wait for the launcher; SIGKILL to PID 1 past the timeout."""
        if self.launcher is None or self.launcher.poll() is not None:
            return
        self.systemctl("poweroff", "--no-block", check=False)
        try:
            self.launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the container's PID 1 takes its whole PID namespace with it."""
        if self.launcher is None or self.launcher.poll() is not None:
            return
        for pid in filter(None, (self.pid, self.launcher.pid)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.launcher.wait(30)

    def remove_cgroups(self) -> None:
        remove_cgroup(self.cgroup)

    def console(self) -> str:
        try:
            return (self.disk.parent / f"{self.name}.console.log").read_text(errors="replace")
        except OSError:
            return ""

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.run("journalctl", "-q", "-u", unit, "-n", str(lines), "--no-pager", check=False).stdout


def remove_cgroup(name: str) -> None:
    """The cgroup ``name`` and those below it, in both hierarchies, once their processes are gone."""
    for hierarchy in CGROUP_HIERARCHIES:
        top = Path(f"/sys/fs/cgroup/{hierarchy}/{name}")
        if not top.exists():
            continue
        groups = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]
        wait_until(lambda: not any((g / "cgroup.procs").read_text().strip() for g in groups), 30, f"{top} to empty")
        for group in groups:
            group.rmdir()


def _parent(pid: int) -> int:
    try:
        return int(re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])
    except (OSError, TypeError):
        return 0
