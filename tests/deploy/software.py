"""The software as docs/operations.md installs it: a virtualenv at /opt/clusterd/venv made
by the distribution's /usr/bin/python3, the project put in it from a wheel.

Installing the dependencies from pip on every run would cost more than the whole tier, so
the virtualenv with only the dependencies in it is built once, keyed by the dependency list,
under CACHE, and copied onto each node's disk before its first boot; each run then
installs only the wheels of the tree under test (``pip install --no-deps``) inside the
nodes. A virtualenv is not relocatable (its scripts name its path), so the cached one is
built at /opt/clusterd/venv itself, inside a private mount namespace where that path is
the cache directory."""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/clusterd-deploy")
VENV = "/opt/clusterd/venv"
VERSION_FILE = "cluster/contract/version.py"

# Runs in a private mount namespace: $1 scratch, $2 the cache entry being built, the rest the requirements.
BUILD_VENV = r"""
set -e
S=$1 OUT=$2; shift 2
mount -t tmpfs tmpfs "$S"; mkdir "$S/u" "$S/w"
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$S/u,workdir=$S/w" /opt   # /opt/clusterd only here
mkdir -p /opt/clusterd/venv; mount --bind "$OUT" /opt/clusterd/venv
/usr/bin/python3 -m venv /opt/clusterd/venv
/opt/clusterd/venv/bin/pip install -q --disable-pip-version-check "$@"
"""


def requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def cached_venv() -> Path:
    """The cache entry for this dependency list and system Python, built if missing."""
    python = subprocess.run(["/usr/bin/python3", "-VV"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\n".join([python, *requirements()]).encode()).hexdigest()[:16]
    entry = CACHE / f"venv-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same entry
        if not entry.exists():
            partial, scratch = CACHE / f"venv-{key}.partial", CACHE / f"scratch-{key}"
            for d in (partial, scratch):
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
            try:
                subprocess.run(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c", BUILD_VENV, "build"]
                    + [str(scratch), str(partial), *requirements()],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"building the cached virtualenv failed:\n{exc.stdout}{exc.stderr}") from None
            finally:
                scratch.rmdir()
            partial.rename(entry)
    return entry


def build_wheel(out: Path, version_suffix: str = "") -> Path:
    """A wheel of the tree under test, built from a copy of it (the tree gets no build/ or
    egg-info); ``version_suffix`` makes the "next release": the same code, a higher version."""
    src = out / f"src{version_suffix}"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench"),
    )
    if version_suffix:
        version = src / VERSION_FILE
        text, count = re.subn(
            r'__version__ = "([^"]+)"', rf'__version__ = "\g<1>{version_suffix}"', version.read_text()
        )
        assert count == 1, f"no __version__ in {VERSION_FILE}"
        version.write_text(text)
    before = set(out.glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(src)
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


def wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]
