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

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

import typer

from .. import election, layout
from ..zk import close as zk_close
from ..zk import connect as zk_connect
from . import common

READY_TIMEOUT = 60.0


def up(
    workers: str = typer.Option("auto", "--workers", help="Workers for the agent: 'auto' (usable cores) or N."),
    cluster: str = typer.Option("default", "--cluster", help="Cluster name."),
    run: Optional[str] = typer.Option(None, "--run", help="Run this shell command against the cluster, then stop."),
    log_level: str = typer.Option("warning", "--log-level", help="Log level of the coordinator and agent."),
) -> None:
    from ..zkserver import ZooKeeperServer  # only `up` needs it

    common.setup_logging("info")
    typer.echo("clusterctl up: local cluster WITHOUT CURVE keys; listening on 127.0.0.1 only", err=True)
    workdir = tempfile.mkdtemp(prefix="clusterd-up-")
    server = ZooKeeperServer(data_dir=os.path.join(workdir, "zk"))
    children: list[subprocess.Popen] = []
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        with common.clear_errors():
            server.start()
        zk = server.connect_string
        base = ["--zk", zk, "--cluster", cluster, "--log-level", log_level, "--bind", "tcp://127.0.0.1:0"]
        children.append(subprocess.Popen([sys.executable, "-m", "cluster.cli.main", "coordinator", *base]))
        children.append(subprocess.Popen([sys.executable, "-m", "agents", *base, "--workers", workers]))
        _wait_ready(zk, cluster, children)
        typer.echo(f"cluster {cluster!r} is up. In another terminal:\n"
                   f"  export CLUSTER_ZK={zk} CLUSTER_NAME={cluster}\n"
                   f"  clusterctl nodes", err=True)
        if run:
            env = dict(os.environ, CLUSTER_ZK=zk, CLUSTER_NAME=cluster)
            proc = subprocess.Popen(run, shell=True, env=env)
            while proc.poll() is None and not stopping:
                time.sleep(0.1)
            if proc.poll() is None:
                proc.terminate()
            code = proc.wait()
        else:
            while not stopping and all(c.poll() is None for c in children):
                time.sleep(0.2)
            for c in children:
                if c.poll() is not None:
                    typer.echo(f"clusterctl up: a cluster process exited with status {c.returncode}", err=True)
                    code = 1
    except typer.Exit as exc:
        code = exc.exit_code
    finally:
        typer.echo("clusterctl up: stopping", err=True)
        for proc in reversed(children):  # the agent drains first, then the coordinator stops
            _stop(proc)
        server.stop()
    raise typer.Exit(code)


def _wait_ready(zk: str, cluster: str, children: list[subprocess.Popen]) -> None:
    client = zk_connect(zk, timeout=10.0)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if any(c.poll() is not None for c in children):
                raise common.fail("the coordinator or the agent failed to start (see its log above)")
            agents = client.exists(layout.agents_path(cluster)) and client.get_children(layout.agents_path(cluster))
            if agents and election.read_leader(client, cluster) is not None:
                return
            time.sleep(0.1)
        raise common.fail(f"the cluster was not ready within {READY_TIMEOUT:.0f} s")
    finally:
        zk_close(client)


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
