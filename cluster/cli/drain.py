"""Ask an agent to drain: it takes no new tasks, gives back those its workers have not started,
finishes the rest, deregisters and exits 0.

The request goes through ZooKeeper, so it works from any machine that can reach the
ensemble, with or without a coordinator. --wait follows the agent until it has left.

Examples:

  clusterctl drain node-17

  clusterctl drain node-17 --wait --timeout 120
"""

from __future__ import annotations

import time
from typing import Optional

import typer
from kazoo.exceptions import NodeExistsError

from cluster.cli import common, options
from cluster.contract import config, layout
from cluster.runtime.zk import ask


@options.with_settings(config.Common, only=("zk", "cluster", "zk_auth"))
def drain(
    node_id: str = typer.Argument(..., help="The node id, as `clusterctl nodes` shows it."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    wait: bool = typer.Option(False, "--wait", help="Wait until the agent has left the cluster."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds --wait waits before giving up (exit 1)."),
) -> None:
    with common.clear_errors():
        cfg = config.load(config.Common, config_file, settings)
        agent = layout.agent_path(cfg.cluster, node_id)
    with common.zookeeper(cfg) as client:
        if not ask(client.exists_async, agent):
            raise common.fail(f"no agent {node_id!r} in cluster {cfg.cluster!r} (see `clusterctl nodes`)")
        try:
            ask(client.create_async, layout.drain_path(cfg.cluster, node_id), b"drain", makepath=True)
        except NodeExistsError:
            pass  # already asked: asking twice is the same request
        typer.echo(f"clusterctl: asked {node_id} to drain", err=True)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while ask(client.exists_async, agent):
            if time.monotonic() > deadline:
                raise common.fail(f"{node_id} is still draining after {timeout:g} s", common.EXIT_FAILED)
            time.sleep(0.2)
        typer.echo(f"clusterctl: {node_id} has drained and left", err=True)
