"""A chaos scenario's job: thousands of short tasks with known answers, run by a
real `clusterctl submit`, checked for every result present, correct and
delivered exactly once. Each result also names the agent (the worker's parent)
that ran it, so scenarios can see where work went."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers import PY, ROOT, LocalCluster, wait_for

SCALE = float(os.environ.get("CHAOS_SCALE", "1"))  # `make chaos` soaks with bigger jobs

TASKS = """
import os, time

def square(x):
    time.sleep(0.004)
    return [x * x, os.environ["CLUSTERD_NODE_ID"]]
"""


class Job:
    def __init__(self, cluster: LocalCluster, tmp: Path, n: int, *extra: str, name: str = "job"):
        self.n = int(n * SCALE)
        module = tmp / "chaos_tasks.py"
        module.write_text(TASKS)
        self.out = tmp / f"{name}.jsonl"
        self.err = open(tmp / f"{name}.stderr", "w+")
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "cluster.cli.main",
                "submit",
                f"{module}:square",
                "--range",
                "0",
                str(self.n),
                "--output",
                str(self.out),
                *extra,
            ],
            env=cluster.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )

    def done(self) -> int:
        try:
            with open(self.out, "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def wait_fraction(self, fraction: float, timeout: float = 120.0) -> None:
        target = int(self.n * fraction)
        wait_for(lambda: self.done() >= target, timeout, interval=0.02, what=f"{target} results")

    def finish(self, timeout: float = 300.0) -> list[dict]:
        """Wait for the job; assert exactly once, all correct; return the rows."""
        code = self.proc.wait(timeout)
        self.err.seek(0)
        assert code == 0, f"submit exited {code}: {self.err.read()[-3000:]}"
        rows = [json.loads(line) for line in self.out.read_text().splitlines()]
        indices = [r["index"] for r in rows]
        assert len(indices) == len(set(indices)), "a result was delivered twice"
        assert sorted(indices) == list(range(self.n)), "results are missing"
        bad = [r for r in rows if not r["ok"] or r["result"][0] != r["index"] ** 2]
        assert not bad, f"wrong or failed results: {bad[:3]}"
        return rows


def ran_on(rows: list[dict]) -> dict[str, int]:
    """How many results each agent (node id) produced."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["result"][1]] = counts.get(r["result"][1], 0) + 1
    return counts
