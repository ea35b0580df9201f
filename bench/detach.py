"""A detached job against the same job attached: throughput, and the holder's memory.

Usage: python -m bench.detach [--tasks N] [--rounds R]     (default 200,000 tasks, 3 rounds)

On one local cluster (ZooKeeper, coordinator, an agent of 2 workers), each round runs
`clusterctl submit builtins:abs --range 0 N` attached (results to /dev/null), then the
same with --detach followed by `clusterctl job wait`, and prints tasks/s of both, their
ratio (issue 17: within 10%), and the holder's peak resident memory (VmHWM, sampled until
it exits), which must not grow with N (run with --tasks 1000000 to see it flat).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from cluster.cli.localstack import LocalStack


def clusterctl(stack: LocalStack, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli.main", *args], env=stack.env, text=True, check=True, **kwargs
    )


def attached(stack: LocalStack, n: int) -> float:
    started = time.monotonic()
    clusterctl(
        stack, "submit", "builtins:abs", "--range", "0", str(n), "--output", "/dev/null", stderr=subprocess.DEVNULL
    )
    return n / (time.monotonic() - started)


def detached(stack: LocalStack, n: int, spool: str) -> tuple[float, int]:
    """From the submit to the end its record gives (so not the CLI's start-up of `job
    wait`, nor its polling)."""
    started = time.time()
    out = clusterctl(
        stack, "submit", "builtins:abs", "--range", "0", str(n), "--detach", "--spool", spool, capture_output=True
    )
    job = out.stdout.strip()
    status = clusterctl(stack, "job", "status", job, "--json", capture_output=True)
    pid = json.loads(status.stdout)["pid"]
    peak = 0
    try:
        holder = psutil.Process(pid)
        while holder.is_running() and holder.status() != psutil.STATUS_ZOMBIE:
            peak = max(peak, _hwm(pid))
            time.sleep(0.1)
    except psutil.NoSuchProcess:
        pass
    final = json.loads(clusterctl(stack, "job", "wait", job, "--json", capture_output=True).stdout)
    return n / (final["ended"] - started), peak


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with LocalStack(workers="2", cluster="detachbench") as stack, tempfile.TemporaryDirectory() as spool:
        for round_ in range(1, args.rounds + 1):
            a = attached(stack, args.tasks)
            d, peak = detached(stack, args.tasks, spool)
            rows.append((a, d, peak))
            print(
                f"round {round_}: attached {a:,.0f} tasks/s, detached {d:,.0f} tasks/s "
                f"({d / a:.2f}x), holder peak RSS {peak / 2**20:.0f} MiB",
                flush=True,
            )
    a, d = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"\n{args.tasks:,} tasks of builtins:abs, 2 workers, median of {args.rounds} rounds")
    print(f"{'job':<34}{'tasks/s':>10}")
    print(f"{'clusterctl submit (attached)':<34}{a:>10,.0f}")
    print(f"{'clusterctl submit --detach + wait':<34}{d:>10,.0f}")
    print(f"detached / attached: {d / a:.2f}x (issue 17: within 10%)")
    print(f"holder peak RSS: {max(r[2] for r in rows) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
