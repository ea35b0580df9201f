"""Serve a live web dashboard of the cluster: the fleet (every node, its state, load and
heartbeat, sortable and filterable, with a membership timeline), the work over the last
hour, the jobs and the coordinator's election. A process of its own, fed by ZooKeeper
watches and the leader's status (as `clusterctl status` asks it, with the client keys);
the page streams changes as they happen.

Listens on 127.0.0.1 by default. On any other address it requires a token: the one in
the --token-file (or CLUSTER_DASHBOARD_TOKEN), else a new one, printed in the URL to open.
With --certfile and --keyfile it serves HTTPS.

Examples:

  clusterctl dashboard

  clusterctl dashboard --host 0.0.0.0 --port 8470 --certfile /etc/clusterd/tls.pem --keyfile /etc/clusterd/tls.key

  clusterctl dashboard --port 0 --json | jq -r .url
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from cluster.cli import common, install, options
from cluster.contract import config
from cluster.dashboard.settings import DashboardConfig
from cluster.runtime.sdnotify import Notifier

if TYPE_CHECKING:
    from cluster.dashboard.server import Options

TOKEN_ENV = "CLUSTER_DASHBOARD_TOKEN"


@options.with_settings(DashboardConfig)
def run(
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    as_json: bool = typer.Option(
        False, "--json", help="Print the startup line as JSON: url, port, token (a new one; empty when given)."
    ),
    log_level: str = common.LOG_LEVEL,
) -> None:
    # The web server (aiohttp) is imported here, not with the CLI: every other command
    # would pay its import time at start.
    from cluster.dashboard import access
    from cluster.dashboard.server import Options

    common.setup_logging(log_level)
    with common.clear_errors():
        cfg = config.load(DashboardConfig, config_file, settings)
        given = Path(cfg.token_file).read_text().strip() if cfg.token_file else os.environ.get(TOKEN_ENV, "")
        if cfg.token_file and not given:
            raise ValueError(f"the token file {cfg.token_file} is empty")
        if cfg.keyfile and not cfg.certfile:
            raise ValueError("--keyfile needs --certfile")
    token = access.token_for(cfg.host, given)
    opts = Options(
        zk=cfg.zk,
        cluster=cfg.cluster,
        keys="" if cfg.insecure else cfg.keys,
        zk_auth=cfg.zk_auth,
        host=cfg.host,
        port=cfg.port,
        token=token,
        certfile=cfg.certfile,
        keyfile=cfg.keyfile,
        idle_poll=cfg.idle_poll,
    )
    with common.zookeeper(cfg) as zk, common.clear_errors():
        asyncio.run(_main(opts, zk, as_json, token_generated=bool(token and not given)))


async def _main(opts: Options, zk: Any, as_json: bool, token_generated: bool) -> None:
    from cluster.dashboard.server import serve, url

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    notifier = Notifier()

    def ready(port: int) -> None:
        # A new token is printed in the URL to open, as Jupyter prints it: nobody knows it
        # otherwise. One the operator gave stays out of the output (and the journal).
        shown = opts.token if token_generated else ""
        address = url(opts, port, shown)
        if as_json:
            common.print_json({"url": address, "port": port, "token": shown})
        else:
            typer.echo(f"clusterctl dashboard: open {address}")
            if token_generated:
                typer.echo("clusterctl dashboard: a new token for this run (--token-file to keep one)", err=True)
            elif opts.token:
                typer.echo("clusterctl dashboard: the token is the one given (--token-file)", err=True)
        notifier.ready(f"serving {opts.cluster} on port {port}")
        loop.create_task(_pet(notifier))

    with contextlib.suppress(asyncio.CancelledError):
        await serve(opts, zk, opts.token, ready)
    notifier.stopping("stopping")


async def _pet(notifier: Notifier) -> None:
    # The event loop pets systemd's watchdog: a hung loop gets the service restarted.
    while notifier.watchdog_interval:
        notifier.pet()
        await asyncio.sleep(notifier.watchdog_interval / 2)


def _dashboard(**values: Any) -> None:
    ctx: typer.Context = values[options.CONTEXT]
    if ctx.invoked_subcommand is None:
        run(**values)


_dashboard.__signature__ = inspect.signature(run)  # type: ignore[attr-defined]

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.callback(
    invoke_without_command=True,
    help=__doc__ + "\nAs a systemd service: `clusterctl dashboard install|uninstall` (see their --help).",
)(_dashboard)
install.add_commands(app, "dashboard")
