"""`clusterctl relay`: run a relay in the foreground.

The coordinator holds one connection to a relay instead of one to each agent
started with `--relay ID` (or `relay = "ID"` in its config). Each ZeroMQ
connection costs the process holding it about 85 KiB, so a fleet of thousands
runs a relay per rack. While the relay is registered the coordinator reaches
those agents through it; once it is gone (stopped, or its ZooKeeper session
expired) the coordinator connects to them directly and queues their unfinished
tasks again. It needs the coordinator's keys directory: it stands in for the
coordinator toward its agents, and for its agents toward the coordinator.

Examples:

  clusterctl relay --id rack-12 --zk zk1:2181 --keys /etc/clusterd/keys

  clusterctl agent --relay rack-12 --zk zk1:2181 --keys /etc/clusterd/keys
"""

from __future__ import annotations

import typer

from cluster.cli.daemon_command import daemon_command
from cluster.contract import config
from cluster.runtime import malloc

from .registration import DuplicateNode
from .relay import Relay

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(name="relay", help=__doc__)(
    daemon_command(config.RelayConfig, Relay, stop=Relay.stop, refused=(DuplicateNode,))
)


def main(argv: list[str] | None = None) -> None:
    """The `clusterctl relay` program (entry point clusterd.programs:relay); exits with its status."""
    malloc.tune()
    app(args=argv, prog_name="clusterctl relay")


if __name__ == "__main__":
    main()
