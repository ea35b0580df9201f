"""Each job's private directories on this node: its working directory and its temporary
directory (TMPDIR), made for its first task here and removed when it ends, with whatever
its tasks left in them.

A job here is an isolation domain (agents/worker.py, ``domain``): the jobs of one
Executor share one. Its directory is named by a digest of the domain, which comes from
the client, so no name can reach outside ``root``.
"""

from __future__ import annotations

import hashlib
import os
import shutil

from cluster.runtime import scratch


class Workspaces:
    def __init__(self, work_dir: str):
        """In ``work_dir``/jobs (cleared of what an earlier agent left there), or, with no
        ``work_dir``, in a new temporary directory that ``close`` removes (or, if this agent
        is killed, the next agent to start here)."""
        self._owned = not work_dir
        self.root = scratch.make("clusterd-agent-") if self._owned else os.path.abspath(work_dir)
        self.jobs = os.path.join(self.root, "jobs")
        shutil.rmtree(self.jobs, ignore_errors=True)
        os.makedirs(self.jobs, mode=0o700, exist_ok=True)

    def open(self, domain: str) -> dict[str, str]:
        """The domain's directories, made if need be, as options for its workers."""
        base = self._path(domain)
        dirs = {"workdir": os.path.join(base, "work"), "tmpdir": os.path.join(base, "tmp")}
        for path in dirs.values():
            os.makedirs(path, mode=0o700, exist_ok=True)
        return dirs

    def remove(self, domain: str) -> None:
        shutil.rmtree(self._path(domain), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root if self._owned else self.jobs, ignore_errors=True)

    def _path(self, domain: str) -> str:
        return os.path.join(self.jobs, hashlib.sha256(domain.encode()).hexdigest()[:24])
