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

import signal
from typing import Optional

import typer

from cluster.cli import common
from cluster.contract import config
from cluster.runtime import malloc

from .agent import Agent
from .registration import DuplicateNode

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__)
def agent(
    zk: common.ZkOpt = common.ZK,
    cluster: Optional[str] = common.CLUSTER,
    config_file: Optional[str] = common.CONFIG,
    keys: Optional[str] = common.KEYS,
    insecure: Optional[bool] = common.INSECURE,
    zk_auth: Optional[str] = common.ZK_AUTH,
    node_id: Optional[str] = typer.Option(None, "--node-id", help="Unique node id (default: the host name)."),
    workers: Optional[str] = typer.Option(None, "--workers", help="'auto' (usable cores) or a number (auto)."),
    bind: Optional[str] = typer.Option(None, "--bind", help="Endpoint to bind (tcp://0.0.0.0:0, a free port)."),
    advertise: Optional[str] = typer.Option(None, "--advertise", help="Host others use to reach this node."),
    label: list[str] = typer.Option([], "--label", help="key=value label; repeatable."),
    relay: Optional[str] = typer.Option(
        None, "--relay", help="Id of the relay the coordinator reaches us through (`clusterctl relay`)."
    ),
    heartbeat_interval: Optional[float] = typer.Option(
        None, help="Seconds between heartbeats until the coordinator sets them (0.5)."
    ),
    heartbeat_misses: Optional[int] = typer.Option(None, help="Missed heartbeats before the coordinator is lost (4)."),
    drain_timeout: Optional[float] = typer.Option(None, help="Seconds a drain waits for held tasks (30)."),
    zk_session_timeout: Optional[float] = typer.Option(
        None, help="ZooKeeper session timeout; our znode goes this long after we vanish (10)."
    ),
    metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics on this port (off)."),
    log_level: str = common.LOG_LEVEL,
    log_format: str = common.LOG_FORMAT,
) -> None:
    common.setup_logging(log_level, log_format)
    with common.clear_errors():
        cfg = config.load(
            config.AgentConfig,
            config_file,
            dict(
                zk=zk,
                cluster=cluster,
                keys=keys,
                insecure=insecure,
                zk_auth=zk_auth,
                node_id=node_id,
                workers=workers,
                bind=bind,
                advertise=advertise,
                labels=config.parse_labels(label) if label else None,
                relay=relay,
                heartbeat_interval=heartbeat_interval,
                heartbeat_misses=heartbeat_misses,
                drain_timeout=drain_timeout,
                zk_session_timeout=zk_session_timeout,
                metrics_port=metrics_port,
            ),
        )
        node = Agent(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: node.drain())
        try:
            code = node.run()
        except DuplicateNode as exc:
            raise common.fail(str(exc)) from None
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """The `clusterctl agent` program (entry point clusterd.programs:agent); exits with its status."""
    malloc.tune()  # payloads one after another: keep freed memory for the next (cluster/runtime/malloc.py)
    app(args=argv, prog_name="clusterctl agent")


if __name__ == "__main__":
    main()
