"""Start a whole one-machine cluster: a private ZooKeeper, a coordinator and an agent.

Prints the CLUSTER_ZK to use from another terminal and runs until Ctrl-C or SIGTERM,
then stops everything (agent drained first). With --run, runs COMMAND against the
cluster instead and exits with its status. Runs without CURVE keys: everything binds
to 127.0.0.1 only.

Examples:

  clusterctl up

  clusterctl up --workers 4 --run 'python examples/classic.py'
"""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Optional

import typer

from cluster.cli import common
from cluster.cli.localstack import LocalStack, StackFailed
from cluster.contract import config


def up(
    workers: str = typer.Option(
        config.AgentConfig.workers, "--workers", help="Workers for the agent: 'auto' (usable cores) or N."
    ),
    cluster: str = typer.Option(config.Common.cluster, "--cluster", help="Cluster name."),
    run: Optional[str] = typer.Option(None, "--run", help="Run this shell command against the cluster, then stop."),
    log_level: str = typer.Option("warning", "--log-level", help="Log level of the coordinator and agent."),
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
    try:
        try:
            stack.start()
        except (StackFailed, OSError, RuntimeError) as exc:
            raise common.fail(str(exc)) from None
        typer.echo(
            f"clusterctl up: cluster {cluster!r} is up. In another terminal:\n"
            f"  export CLUSTER_ZK={stack.zk} CLUSTER_NAME={cluster}\n"
            f"  clusterctl nodes",
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
        stack.stop()
    raise typer.Exit(code)
