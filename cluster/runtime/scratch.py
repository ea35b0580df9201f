"""Directories of a process's own under the system's temporary directory, marked with
their owner, so that a later one removes them once that owner is gone: a process killed
with SIGKILL has no chance to remove its own."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

OWNER = "owner.pid"  # in each directory: the pid of the process that made it


def make(prefix: str) -> str:
    """A new directory named ``prefix...``, after removing those of owners that are gone."""
    clear_stale(prefix)
    path = tempfile.mkdtemp(prefix=prefix)
    with open(os.path.join(path, OWNER), "w") as f:
        f.write(str(os.getpid()))
    return path


def clear_stale(prefix: str) -> list[str]:
    """Remove the ``prefix...`` directories whose owner is dead; what was removed."""
    removed = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{prefix}*")):
        try:
            with open(os.path.join(path, OWNER)) as f:
                pid = int(f.read())
            os.kill(pid, 0)
        except ProcessLookupError:  # its owner is dead
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except (OSError, ValueError):  # alive (PermissionError: someone else's), or no owner file yet
            continue
    return removed
