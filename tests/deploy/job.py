"""A job as a user runs it from this host: ``clusterctl submit tasks.py:work --range 0 N``
with the client's CLUSTER_* settings, results streamed to a JSON-lines file, then checked:
every result present, correct and delivered exactly once. Each result names its agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from container import wait_until
from software import ROOT

TASKS = """
import os, time

def work(x):
    time.sleep({seconds})
    return [x * x, os.environ["CLUSTERD_NODE_ID"]]
"""


class Job:
    def __init__(self, env: dict[str, str], tmp: Path, n: int, seconds: float = 0.05, name: str = "job"):
        self.n = n
        module = tmp / f"{name}_tasks.py"
        module.write_text(TASKS.format(seconds=seconds))
        self.out = tmp / f"{name}.jsonl"
        self.err = open(tmp / f"{name}.stderr", "w+")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli.main", "submit", f"{module}:work", "--range", "0", str(n)]
            + ["--output", str(self.out)],
            env=env,
            cwd=ROOT,  # `python -m` imports the tree under test from here
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )
        self.seconds = 0.0

    def done(self) -> int:
        try:
            with open(self.out, "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def wait_fraction(self, fraction: float, timeout: float = 120.0) -> None:
        target = int(self.n * fraction)
        wait_until(lambda: self.done() >= target, timeout, f"{target} of {self.n} results", interval=0.05)

    def finish(self, timeout: float = 180.0) -> dict[str, int]:
        """Wait for the job; assert every result exactly once and right; how many each agent ran."""
        code = self.proc.wait(timeout)
        self.seconds = time.monotonic() - self.started
        self.err.seek(0)
        assert code == 0, f"submit exited {code}: {self.err.read()[-3000:]}"
        rows = [json.loads(line) for line in self.out.read_text().splitlines()]
        indices = [r["index"] for r in rows]
        assert len(indices) == len(set(indices)), "a result was delivered twice"
        assert sorted(indices) == list(range(self.n)), "results are missing"
        bad = [r for r in rows if not r["ok"] or r["result"][0] != r["index"] ** 2]
        assert not bad, f"wrong or failed results: {bad[:3]}"
        ran_on: dict[str, int] = {}
        for r in rows:
            ran_on[r["result"][1]] = ran_on.get(r["result"][1], 0) + 1
        return ran_on

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()
