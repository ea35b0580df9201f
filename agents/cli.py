"""`clusterctl agent`: run a node agent in the foreground.

It registers this node in ZooKeeper, starts one worker process per usable core
(CPU affinity and cgroup quota count), and serves the coordinator. SIGTERM or
Ctrl-C drains it: no new tasks, tasks its workers have not started go back to
the coordinator, its workers' tasks finish (up to --drain-timeout), then it
deregisters and exits 0.

Examples:

  clusterctl agent --zk zk1:2181,zk2:2181,zk3:2181 --label rack=r12

  clusterctl agent --workers 4 --node-id gpu-07 --bind tcp://0.0.0.0:7100 --advertise 10.0.0.7

  clusterctl agent --relay rack-12   (the coordinator reaches it through `clusterctl relay --id rack-12`)

As a systemd service: clusterctl agent install --help / clusterctl agent uninstall --help
"""

from __future__ import annotations

import typer

from cluster.cli.daemon_command import daemon_command
from cluster.contract import config
from cluster.runtime import malloc

from .agent import Agent
from .registration import DuplicateNode

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
# SIGTERM or Ctrl-C drains it; another live agent with its id is one clear line.
app.command(name="agent", help=__doc__)(
    daemon_command(config.AgentConfig, Agent, stop=Agent.drain, refused=(DuplicateNode,))
)


def main(argv: list[str] | None = None) -> None:
    """The `clusterctl agent` program (entry point clusterd.programs:agent); exits with its status."""
    malloc.tune()  # payloads one after another: keep freed memory for the next (cluster/runtime/malloc.py)
    app(args=argv, prog_name="clusterctl agent")


if __name__ == "__main__":
    main()
