"""Start a whole one-machine cluster: a private ZooKeeper, a coordinator, an agent and
its web dashboard (`clusterctl dashboard`, on 127.0.0.1).

Prints the CLUSTER_ZK to use from another terminal and the dashboard's URL, and runs until Ctrl-C or SIGTERM,
then stops everything (agent drained first). With --run, runs COMMAND against the
cluster instead and exits with its status. Runs without CURVE keys: everything binds
to 127.0.0.1 only.

Examples:

  clusterctl up

  clusterctl up --workers 4 --run 'python examples/classic.py'

  clusterctl up --dashboard-port 0 (any free port)   clusterctl up --no-dashboard
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Optional

import typer

from cluster.cli import common
from cluster.cli.localstack import LocalStack, StackFailed
from cluster.contract import config
from cluster.runtime.lifeline import dies_with_parent


def up(
    workers: str = typer.Option(
        config.AgentConfig.workers, "--workers", help="Workers for the agent: 'auto' (usable cores) or N."
    ),
    cluster: str = typer.Option(config.Common.cluster, "--cluster", help="Cluster name."),
    run: Optional[str] = typer.Option(None, "--run", help="Run this shell command against the cluster, then stop."),
    log_level: str = typer.Option("warning", "--log-level", help="Log level of the coordinator and agent."),
    dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="Also serve the web dashboard."),
    dashboard_port: int = typer.Option(
        8470, "--dashboard-port", help="The dashboard's port on 127.0.0.1; 0: any free one."
    ),
) -> None:
    common.setup_logging("info")
    typer.echo("clusterctl up: local cluster WITHOUT CURVE keys (insecure mode); listening on 127.0.0.1 only", err=True)
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = LocalStack(workers=workers, cluster=cluster, log_level=log_level)
    code = 0
    board: subprocess.Popen | None = None
    try:
        try:
            stack.start()
        except (StackFailed, OSError, RuntimeError) as exc:
            raise common.fail(str(exc)) from None
        board, url = start_dashboard(stack, dashboard_port) if dashboard else (None, "")
        typer.echo(
            f"clusterctl up: cluster {cluster!r} is up. In another terminal:\n"
            f"  export CLUSTER_ZK={stack.zk} CLUSTER_NAME={cluster}\n"
            f"  clusterctl nodes" + (f"\nclusterctl up: dashboard at {url}" if url else ""),
            err=True,
        )
        if run:
            proc = subprocess.Popen(run, shell=True, env=stack.env)
            while proc.poll() is None and not stopping:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.terminate()
            code = proc.wait()
        else:
            while not stopping and not stack.failed():
                time.sleep(0.2)
            if stack.failed():
                typer.echo(f"clusterctl up: a cluster process exited with status {stack.failed()}", err=True)
                code = 1
    finally:
        typer.echo("clusterctl up: stopping", err=True)
        if board is not None and board.poll() is None:
            board.terminate()
            board.wait(15)
        stack.stop()
    raise typer.Exit(code)


def start_dashboard(stack: LocalStack, port: int) -> tuple[subprocess.Popen | None, str]:
    """The dashboard of the local cluster and its URL; a dashboard that cannot start (its port
    taken by another `up`, say) is a warning: the cluster is still up."""
    argv = [
        sys.executable,
        "-m",
        "cluster.cli.main",
        "dashboard",
        "--port",
        str(port),
        "--json",
        "--log-level",
        "warning",
    ]
    board = subprocess.Popen(
        argv + ["--zk", stack.zk, "--cluster", stack.cluster, "--insecure"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=dies_with_parent(),
    )
    line = board.stdout.readline() if board.stdout else ""
    if not line.startswith("{"):
        board.wait()
        typer.echo(f"clusterctl up: the dashboard did not start (port {port} taken? --dashboard-port 0)", err=True)
        return None, ""
    return board, json.loads(line)["url"]
