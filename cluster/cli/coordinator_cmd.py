"""Run a coordinator in the foreground. Several may run: one leads, the others stand by.

Examples:

  clusterctl coordinator --zk zk1:2181,zk2:2181,zk3:2181

  clusterctl coordinator --bind tcp://0.0.0.0:5555 --advertise head.example.org
"""

from __future__ import annotations

import signal
from typing import Optional

import typer

from cluster.cli import common
from cluster.contract import config
from cluster.coordinator.service import Coordinator


def coordinator(
    zk: common.ZkOpt = common.ZK,
    cluster: Optional[str] = common.CLUSTER,
    config_file: Optional[str] = common.CONFIG,
    keys: Optional[str] = common.KEYS,
    insecure: Optional[bool] = common.INSECURE,
    zk_auth: Optional[str] = common.ZK_AUTH,
    bind: Optional[str] = typer.Option(None, help="Client endpoint to bind (default tcp://0.0.0.0:0, a free port)."),
    advertise: Optional[str] = typer.Option(
        None, help="Host clients use to reach us (default: address routing to ZooKeeper)."
    ),
    heartbeat_interval: Optional[float] = typer.Option(None, help="Seconds between heartbeats, at least (0.5)."),
    heartbeat_misses: Optional[int] = typer.Option(None, help="Missed heartbeats before an agent is lost (4)."),
    heartbeat_budget: Optional[float] = typer.Option(
        None, help="Heartbeats a second from agents, at most: larger fleets beat less often (4000; 0: never)."
    ),
    client_timeout: Optional[float] = typer.Option(
        None, help="Seconds of client silence before its job is cancelled (30)."
    ),
    zk_session_timeout: Optional[float] = typer.Option(
        None, help="ZooKeeper session timeout; a dead leader is replaced after it (10)."
    ),
    metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics on this port (off)."),
    log_level: str = common.LOG_LEVEL,
    log_format: str = common.LOG_FORMAT,
) -> None:
    common.setup_logging(log_level, log_format)
    with common.clear_errors():
        cfg = config.load(
            config.CoordinatorConfig,
            config_file,
            dict(
                zk=zk,
                cluster=cluster,
                keys=keys,
                insecure=insecure,
                zk_auth=zk_auth,
                bind=bind,
                advertise=advertise,
                heartbeat_interval=heartbeat_interval,
                heartbeat_misses=heartbeat_misses,
                heartbeat_budget=heartbeat_budget,
                client_timeout=client_timeout,
                zk_session_timeout=zk_session_timeout,
                metrics_port=metrics_port,
            ),
        )
        node = Coordinator(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: node.stop())
        raise typer.Exit(node.run())
