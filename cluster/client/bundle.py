"""A shipped directory (``clusterctl submit --ship DIR``, ``Executor(ship=[...])``) as one
content-addressed bundle: its files, less those its ``.gitignore`` files ignore, in a
deterministic gzipped tar named by the sha256 of the archive.

The same files give the same bytes (entries sorted; times, owners and modes fixed), so the
same digest, and an agent that has a digest unpacked never unpacks it again
(agents/bundles.py). A bundle travels as one frame, so it must fit the cluster's payload
limit; over it, the error names the largest files, the likeliest ones to leave out.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pathspec

from cluster.contract import wire

LARGEST_NAMED = 5  # files named by the error for a bundle over its limit


class BundleTooLarge(ValueError):
    """The directory's archive is over the limit; nothing was sent."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    source: str  # the directory, as given
    digest: str  # sha256 hex of ``data``
    data: bytes  # the archive
    files: int


@dataclasses.dataclass(frozen=True)
class _File:
    name: str  # relative, with "/"
    path: str
    size: int


def build(directory: str | os.PathLike[str], limit: int = wire.MAX_PAYLOAD_DEFAULT) -> Bundle:
    """The bundle of ``directory``. Raises NotADirectoryError, or BundleTooLarge when its
    archive would be over ``limit`` bytes (it stops writing there)."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"cannot ship {directory}: not a directory")
    files = sorted(shipped_files(root), key=lambda f: f.name)
    out = _Capped(limit)
    try:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for file in files:
                _add(tar, file)
    except _Capped.Full:
        raise BundleTooLarge(_too_large(directory, files, limit)) from None
    data = out.getvalue()
    return Bundle(str(directory), hashlib.sha256(data).hexdigest(), data, len(files))


def shipped_files(root: Path) -> Iterator[_File]:
    """The files under ``root`` that git would not ignore, as its ``.gitignore`` files say
    (each for the tree below it, a deeper one overriding), and never ``.git``. Symbolic
    links are followed: the bundle holds what they point to."""
    specs: dict[str, pathspec.GitIgnoreSpec] = {}
    seen: set[str] = set()
    for top, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        base = Path(top).relative_to(root).as_posix()
        base = "" if base == "." else base
        if ".gitignore" in names:
            with open(os.path.join(top, ".gitignore"), encoding="utf-8", errors="replace") as f:
                specs[base] = pathspec.GitIgnoreSpec.from_lines(f)
        dirs[:] = sorted(d for d in dirs if d != ".git" and not _ignored(specs, _join(base, d) + "/"))
        for name in names:
            rel = _join(base, name)
            path = os.path.join(top, name)
            if os.path.isfile(path) and not _ignored(specs, rel):
                yield _File(rel, path, os.path.getsize(path))


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _ignored(specs: dict[str, pathspec.GitIgnoreSpec], rel: str) -> bool:
    """Git's answer: the deepest ``.gitignore`` with a pattern that matches decides."""
    ignored = False
    parts = rel.rstrip("/").split("/")
    for depth in range(len(parts)):
        base = "/".join(parts[:depth])
        spec = specs.get(base)
        if spec is None:
            continue
        verdict = spec.check_file(rel[len(base) + 1 :] if base else rel).include
        if verdict is not None:
            ignored = verdict
    return ignored


def _add(tar: tarfile.TarFile, file: _File) -> None:
    with open(file.path, "rb") as f:
        st = os.fstat(f.fileno())
        info = tarfile.TarInfo(file.name)
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & 0o100 else 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, f)


def _too_large(directory: str | os.PathLike[str], files: list[_File], limit: int) -> str:
    largest = sorted(files, key=lambda f: f.size, reverse=True)[:LARGEST_NAMED]
    named = ", ".join(f"{f.name} ({_size(f.size)})" for f in largest)
    total = sum(f.size for f in files)
    return (
        f"cannot ship {directory}: its {len(files)} files ({_size(total)}) make a bundle over the limit of "
        f"{_size(limit)}; the largest: {named}. Leave out what the tasks do not need (a .gitignore there does)."
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class _Capped(io.BytesIO):
    """An in-memory file that refuses to grow past ``limit`` bytes."""

    class Full(Exception):
        pass

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.limit:
            raise _Capped.Full
        return super().write(data)
