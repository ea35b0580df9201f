"""The agent's cache of shipped directories (cluster/client/bundle.py), in ``root``
(work_dir/bundles): each digest unpacked once, into a directory of that name, read-only.

A bundle is unpacked under a temporary name and renamed when complete, so a directory named
by a digest is always whole (one left by an agent killed mid-unpack is removed at start).
Every member is checked first: regular files and directories only, relative names without
``..``, and no more bytes than the cache may hold; one that fails is refused, and the jobs
naming it fail with the reason.

A job that names bundles gets their files copied into its working directory (private to
its isolation domain: what its tasks write there stays with it) and their directories
first on its ``sys.path`` (agents/worker.py, ``bind``). Bundles that no open job uses are
removed ``max_age`` seconds after their last use, and the least recently used first while
the cache holds more than ``max_bytes``. The leader sends a bundle to an agent once per
connection, so one it sent over this connection is removed only after it answered a
``ForgetBundles`` for it (``sweep``, ``forgotten``): a JobSpec it sent before that answer
finds its bundles here.
"""

from __future__ import annotations

import collections
import compileall
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable

from cluster.contract import wire

log = logging.getLogger("agents.agent")

UNPACKING = ".unpacking-"  # the prefix of a bundle being unpacked


class MissingBundle(Exception):
    """A job names a bundle this agent does not have, or refused."""


class UnsafeBundle(ValueError):
    """An archive that would write outside its directory, or is not what its digest names."""


@dataclasses.dataclass
class _Entry:
    path: str
    size: int
    last_used: float
    jobs: set[str] = dataclasses.field(default_factory=set)


class BundleCache:
    def __init__(
        self,
        root: str,
        *,
        max_bytes: int,
        max_age: float,
        now: float,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        """Takes over the bundles an earlier agent left in ``root`` (their last use: their mtime)."""
        self.root = root
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters
        self.entries: dict[str, _Entry] = {}
        self.refused: dict[str, str] = {}  # digest -> why, for the jobs that name it
        self.announced: set[str] = set()  # received over the leader's connection: it counts on them
        self.asked: set[str] = set()  # the leader was asked to forget these (ForgetBundles)
        self._jobs: dict[str, tuple[list[str], str]] = {}  # job -> its bundles and working directory
        self._copied: set[tuple[str, str]] = set()  # (working directory, digest) already copied there
        os.makedirs(root, mode=0o700, exist_ok=True)
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if name.startswith(UNPACKING) or not _is_digest(name):
                _remove(path)
            else:
                self.entries[name] = _Entry(path, _tree_size(path), min(now, os.stat(path).st_mtime))

    # ------------------------------------------------------------ from the leader

    def receive(self, digest: str, data: wire.Buffer, now: float) -> None:
        """A bundle from the leader: unpacked unless it is here already."""
        self.counters["bundles_received"] += 1
        self.announced.add(digest)
        self.asked.discard(digest)
        entry = self.entries.get(digest)
        if entry is not None:
            self._touch(entry, now)
            return
        try:
            self.entries[digest] = self._unpack(digest, data, now)
        except (UnsafeBundle, tarfile.TarError, OSError, EOFError) as exc:
            self.refused[digest] = f"bundle {digest[:12]} refused: {exc}"
            log.warning("%s", self.refused[digest])
            return
        self.refused.pop(digest, None)
        self.counters["bundles_unpacked"] += 1
        log.info("bundle %s unpacked (%d bytes)", digest[:12], self.entries[digest].size)

    def hello(self) -> None:
        """A coordinator said Hello: it has sent us nothing over this connection yet."""
        self.announced.clear()
        self.asked.clear()

    def forgotten(self, digests: Iterable[str]) -> None:
        """The leader answered ForgetBundles: it sends these again before a job naming them."""
        for digest in digests:
            if digest in self.asked:
                self.asked.discard(digest)
                self.announced.discard(digest)

    # ------------------------------------------------------------------- jobs

    def open(self, job_id: str, digests: list[str], workdir: str, now: float) -> list[str]:
        """The bundles' directories, for the job's ``sys.path``, their files copied into
        ``workdir`` (the first bundle's winning a clash, as on ``sys.path``). Raises
        MissingBundle when one is not here."""
        for digest in digests:
            if digest not in self.entries:
                raise MissingBundle(self.refused.get(digest) or f"bundle {digest[:12]} did not reach this agent")
        entries = [self.entries[d] for d in digests]
        for digest, entry in reversed(list(zip(digests, entries))):
            if (workdir, digest) not in self._copied:
                _copy_writable(entry.path, workdir)
                self._copied.add((workdir, digest))
        for entry in entries:
            entry.jobs.add(job_id)
            self._touch(entry, now)
        self._jobs[job_id] = (list(digests), workdir)
        return [entry.path for entry in entries]

    def close(self, job_id: str, now: float) -> None:
        """The job ended here: its bundles may go once no other job uses them."""
        digests, workdir = self._jobs.pop(job_id, ((), ""))
        for digest in digests:
            entry = self.entries.get(digest)
            if entry is not None:
                entry.jobs.discard(job_id)
                self._touch(entry, now)
        if workdir and not any(w == workdir for _, w in self._jobs.values()):
            self._copied = {(w, d) for w, d in self._copied if w != workdir}  # its domain's directory goes

    # -------------------------------------------------------------- eviction

    def sweep(self, now: float) -> list[str]:
        """Remove the bundles due to go (unused, and too old or beyond ``max_bytes``); returns
        those of them to ask the leader to forget first (it counts on them)."""
        ask = []
        for digest in self._due(now):
            if digest in self.announced:
                if digest not in self.asked:
                    ask.append(digest)
            else:
                entry = self.entries.pop(digest)
                _remove(entry.path)
                log.info("bundle %s removed from the cache", digest[:12])
        return ask

    def asking(self, digests: Iterable[str]) -> None:
        """A ForgetBundles for these went to the leader."""
        self.asked.update(digests)

    def _due(self, now: float) -> list[str]:
        idle = sorted((e.last_used, d) for d, e in self.entries.items() if not e.jobs)
        due = [d for used, d in idle if now - used > self.max_age]
        total = sum(e.size for e in self.entries.values())
        total -= sum(self.entries[d].size for d in due)
        for _, digest in idle:
            if total <= self.max_bytes:
                break
            if digest not in due:
                due.append(digest)
                total -= self.entries[digest].size
        return due

    def close_all(self) -> None:
        """Remove the cache (an agent without a work_dir keeps nothing)."""
        _remove(self.root)

    # ---------------------------------------------------------------- unpack

    def _unpack(self, digest: str, data: wire.Buffer, now: float) -> _Entry:
        if hashlib.sha256(data).hexdigest() != digest:
            raise UnsafeBundle("its archive is not what its digest names")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            size = check_members(members, self.max_bytes)
            target = os.path.join(self.root, digest)
            tmp = tempfile.mkdtemp(prefix=UNPACKING, dir=self.root)
            try:
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later: a second line of defence
                    tar.extractall(tmp, members, filter="data")
                else:
                    tar.extractall(tmp, members)
                # Compiled now, once, so that no worker writes __pycache__ into the cache (a
                # worker running as root could, read-only or not); a file that does not compile
                # fails the task that imports it, as it would anywhere.
                compileall.compile_dir(tmp, ddir=target, quiet=2)
                _read_only(tmp)
                os.rename(tmp, target)
            except BaseException:
                _remove(tmp)
                raise
        return _Entry(target, size, now)

    def _touch(self, entry: _Entry, now: float) -> None:
        entry.last_used = now
        with contextlib.suppress(OSError):
            os.utime(entry.path, (now, now))  # what a restarted agent reads as its last use


def check_members(members: list[tarfile.TarInfo], max_bytes: int) -> int:
    """Every member a regular file or a directory, with a relative name that stays inside
    the bundle; returns their size, which may not pass ``max_bytes``."""
    size = 0
    for member in members:
        name = member.name
        if not (member.isreg() or member.isdir()):
            raise UnsafeBundle(f"{name!r} is not a regular file or a directory")
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or "\0" in name or ".." in parts or not name.strip("/"):
            raise UnsafeBundle(f"{name!r} is not a relative name inside the bundle")
        size += member.size
    if size > max_bytes:
        raise UnsafeBundle(f"it unpacks to {size} bytes, more than this agent's bundle_cache_bytes ({max_bytes})")
    return size


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _copy_writable(src: str, dst: str) -> None:
    """A job's copy of a bundle: its own to change, where the cache's stays read-only
    (shutil.copytree would copy the read-only modes of its directories too)."""
    for top, _, files in os.walk(src):
        target = os.path.normpath(os.path.join(dst, os.path.relpath(top, src)))
        os.makedirs(target, mode=0o700, exist_ok=True)
        for name in files:
            source, copy = os.path.join(top, name), os.path.join(target, name)
            shutil.copyfile(source, copy)
            os.chmod(copy, 0o700 if os.stat(source).st_mode & stat.S_IXUSR else 0o600)


def _read_only(top: str) -> None:
    for path, _, files in os.walk(top):
        for name in files:
            full = os.path.join(path, name)
            os.chmod(full, 0o555 if os.stat(full).st_mode & stat.S_IXUSR else 0o444)
    for path, _, _ in os.walk(top, topdown=False):
        os.chmod(path, 0o555)


def _tree_size(top: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for path, _, files in os.walk(top) for f in files)


def _remove(path: str) -> None:
    """Remove a tree, read-only directories too."""
    if os.path.isdir(path) and not os.path.islink(path):
        for top, _, _ in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(top, 0o700)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
