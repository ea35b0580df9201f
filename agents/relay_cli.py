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

import signal
from typing import Optional

import typer

from cluster.cli import common
from cluster.contract import config
from cluster.runtime import malloc

from .registration import DuplicateNode
from .relay import Relay

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__)
def relay(
    zk: common.ZkOpt = common.ZK,
    cluster: Optional[str] = common.CLUSTER,
    config_file: Optional[str] = common.CONFIG,
    keys: Optional[str] = common.KEYS,
    insecure: Optional[bool] = common.INSECURE,
    zk_auth: Optional[str] = common.ZK_AUTH,
    relay_id: Optional[str] = typer.Option(
        None, "--id", help="The id agents name with --relay (default: the host name)."
    ),
    bind: Optional[str] = typer.Option(
        None, "--bind", help="Endpoint the coordinator connects to (tcp://0.0.0.0:0, a free port)."
    ),
    advertise: Optional[str] = typer.Option(None, "--advertise", help="Host the coordinator uses to reach this relay."),
    zk_session_timeout: Optional[float] = typer.Option(
        None, help="ZooKeeper session timeout; its agents go direct this long after it vanishes (10)."
    ),
    metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics on this port (off)."),
    log_level: str = common.LOG_LEVEL,
    log_format: str = common.LOG_FORMAT,
) -> None:
    common.setup_logging(log_level, log_format)
    with common.clear_errors():
        cfg = config.load(
            config.RelayConfig,
            config_file,
            dict(
                zk=zk,
                cluster=cluster,
                keys=keys,
                insecure=insecure,
                zk_auth=zk_auth,
                relay_id=relay_id,
                bind=bind,
                advertise=advertise,
                zk_session_timeout=zk_session_timeout,
                metrics_port=metrics_port,
            ),
        )
        node = Relay(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: node.stop())
        try:
            code = node.run()
        except DuplicateNode as exc:
            raise common.fail(str(exc)) from None
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """The `clusterctl relay` program (entry point clusterd.programs:relay); exits with its status."""
    malloc.tune()
    app(args=argv, prog_name="clusterctl relay")


if __name__ == "__main__":
    main()
