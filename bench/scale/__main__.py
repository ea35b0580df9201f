"""How the coordinator and ZooKeeper scale with the fleet: N simulated agents
(``python -m bench.scale.simfleet``: real znodes, sockets, protocol and heartbeats;
simulated workers) against a real coordinator and a private ZooKeeper.

For each N (and N=10, the throughput reference): membership convergence, idle
CPU / memory / file descriptors of the coordinator per agent, ZooKeeper writes
at steady state, dispatch throughput and latency, a job under 10% churn per
minute (every result exactly once), and 10% of the fleet leaving at once.

Usage: python -m bench.scale --agents 100 1000 5000 [--json] [--churn-seconds 60]
(`make scale` runs it.)
Progress on stderr; the table (or --json) on stdout. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.scale.run import render, run_scale


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--baseline", type=int, default=10, help="reference size for the throughput ratio (0: none)")
    p.add_argument("--zk", default="", help="use this ZooKeeper instead of a private one")
    p.add_argument("--per-process", type=int, default=1000, help="most simulated agents per process")
    p.add_argument("--tasks", type=int, default=100_000, help="instant tasks in the throughput job")
    p.add_argument("--window", type=int, default=10_000, help="the throughput job's window (tasks in flight)")
    p.add_argument("--steady-seconds", type=float, default=20.0)
    p.add_argument("--churn-seconds", type=float, default=60.0, help="0 skips the churn phase")
    p.add_argument("--churn-rate", type=float, default=0.10, help="fraction of the fleet replaced per minute")
    p.add_argument("--churn-task-seconds", type=float, default=1.0)
    p.add_argument("--heartbeat-interval", type=float, default=0.5)
    p.add_argument(
        "--heartbeat-budget",
        type=float,
        default=4000.0,
        help="the coordinator's heartbeats/s from agents; 0: every agent beats every interval",
    )
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.add_argument(
        "--relays", type=int, default=0, help="run this many relays; the simulated agents name them in turn (0: none)"
    )
    p.add_argument("--profile", default="", help="run the coordinator under cProfile, writing DIR/coordinator-N.prof")
    p.add_argument("--keep", action="store_true", help="keep the work dir with every process's log")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    try:
        results = run_scale(
            a.agents,
            zk=a.zk,
            workers=a.workers,
            baseline=a.baseline,
            per_process=a.per_process,
            tasks=a.tasks,
            steady_seconds=a.steady_seconds,
            churn_seconds=a.churn_seconds,
            churn_rate=a.churn_rate,
            churn_task_seconds=a.churn_task_seconds,
            heartbeat_interval=a.heartbeat_interval,
            heartbeat_budget=a.heartbeat_budget,
            session_timeout=a.session_timeout,
            profile=a.profile,
            keep=a.keep,
            window=a.window,
            relays=a.relays,
        )
    except AssertionError as exc:
        print(f"scale: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=2) if a.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
