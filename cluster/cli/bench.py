"""Simulate N agents against a real coordinator and ZooKeeper and measure how it scales.

Starts a private ZooKeeper (or uses --zk), `clusterctl coordinator --insecure` and
N simulated agents (`python -m agents.simfleet`, 1,000 per process, one ZooKeeper
session per process), then reports membership convergence, idle coordinator CPU,
memory and file descriptors per agent, ZooKeeper writes at steady state, dispatch
throughput and latency (against --baseline agents), a job under churn with every
result checked exactly once, and 10% of the fleet leaving at once.
See docs/performance.md.

Examples:

  clusterctl bench scale --agents 1000

  clusterctl bench scale --agents 100 --agents 1000 --agents 5000 --json > scale.json
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from ..scalebench.run import render, run_scale

app = typer.Typer(
    help="Benchmarks against a real cluster on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command(help=__doc__)
def scale(
    agents: list[int] = typer.Option([100], "--agents", help="Fleet size; repeat for several (100, 1000, 5000)."),
    workers: int = typer.Option(8, help="Simulated workers per agent."),
    baseline: int = typer.Option(10, help="Also run this size, the reference for the throughput ratio (0: none)."),
    zk: Optional[str] = typer.Option(None, "--zk", help="Use this ZooKeeper instead of a private one."),
    per_process: int = typer.Option(1000, help="Most simulated agents per simulator process."),
    tasks: int = typer.Option(100_000, help="Instant tasks in the throughput job."),
    window: int = typer.Option(10_000, help="The throughput job's window (tasks without a result at once)."),
    steady_seconds: float = typer.Option(20.0, help="Seconds of idle steady state to measure."),
    churn_seconds: float = typer.Option(60.0, help="Seconds of churn while a job runs (0: skip)."),
    churn_rate: float = typer.Option(0.10, help="Fraction of the fleet replaced per minute during churn."),
    churn_task_seconds: float = typer.Option(1.0, help="Run time of each task during churn."),
    heartbeat_interval: float = typer.Option(0.5, help="Heartbeat interval of the coordinator and the agents."),
    heartbeat_budget: float = typer.Option(
        4000.0, help="The coordinator's heartbeats/s from agents, at most (0: every agent beats every interval)."
    ),
    session_timeout: float = typer.Option(10.0, help="The simulators' ZooKeeper session timeout."),
    relays: int = typer.Option(0, help="Run this many relays; the simulated agents name them in turn (0: none)."),
    profile: Optional[str] = typer.Option(None, help="Run the coordinator under cProfile (DIR/coordinator-N.prof)."),
    keep: bool = typer.Option(False, help="Keep the work dir (logs of every process)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    try:
        results = run_scale(
            agents,
            zk=zk or "",
            workers=workers,
            baseline=baseline,
            per_process=per_process,
            tasks=tasks,
            steady_seconds=steady_seconds,
            churn_seconds=churn_seconds,
            churn_rate=churn_rate,
            churn_task_seconds=churn_task_seconds,
            heartbeat_interval=heartbeat_interval,
            heartbeat_budget=heartbeat_budget,
            session_timeout=session_timeout,
            profile=profile or "",
            keep=keep,
            window=window,
            relays=relays,
        )
    except (RuntimeError, ValueError) as exc:
        typer.echo(f"clusterctl bench scale: {exc}", err=True)
        raise typer.Exit(2) from None
    except AssertionError as exc:
        typer.echo(f"clusterctl bench scale: FAILED: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        typer.echo(render(results))
