"""Options and helpers every command shares: --config, logging,
and turning known errors into one clear line with a documented exit code."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator

import typer
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss, KazooException, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError

from cluster.client.session import ClusterUnavailable
from cluster.contract.config import Common, ConfigError
from cluster.runtime.zk import ZooKeeperUnreachable
from cluster.runtime.zk import close as zk_close
from cluster.runtime.zk import connect as zk_connect

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Without a handler, kazoo's retry chatter ("Connection dropped: ...") reaches the
# terminal through logging's last-resort handler, ahead of our one clear line.
# Daemons still see it: setup_logging puts a handler on the root logger.
logging.getLogger("kazoo").addHandler(logging.NullHandler())

# The settings' options (--zk, --cluster, --keys, --zk-auth...) come from their fields
# in cluster/contract/config.py through cluster/cli/options.py; these are not settings.
CONFIG = typer.Option(None, "--config", help="TOML config file (see configs/).", show_default=False)
LOG_LEVEL = typer.Option("info", "--log-level", help="debug, info, warning or error.")
LOG_FORMAT = typer.Option("text", "--log-format", help="text, or json (one object per line, for log shippers).")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """One event per line on stderr (journald captures it)."""
    if fmt not in ("text", "json"):
        raise fail(f"--log-format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    logging.getLogger("kazoo").setLevel(logging.WARNING)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"clusterctl: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def clear_errors() -> Iterator[None]:
    """Known failures become one line on stderr and exit status 2, never a traceback."""
    try:
        yield
    except (ConfigError, ZooKeeperUnreachable, ClusterUnavailable, ValueError, OSError) as exc:
        raise fail(str(exc)) from None


@contextlib.contextmanager
def zookeeper(cfg: Common, timeout: float = 10.0) -> Iterator[KazooClient]:
    """A session for one command: an unreachable ensemble is one clear line, and the
    session is closed however the command ends."""
    with clear_errors():
        client = zk_connect(cfg.zk, timeout=timeout, auth_file=cfg.zk_auth)
    try:
        yield client
    except (KazooTimeoutError, ConnectionLoss, SessionExpiredError) as exc:  # it went away after we connected
        raise fail(
            f"lost ZooKeeper at {cfg.zk} midway ({str(exc) or type(exc).__name__}); "
            "check that the ensemble is still running"
        ) from None
    except KazooException as exc:
        raise fail(f"ZooKeeper at {cfg.zk} refused the request: {type(exc).__name__} {exc}".rstrip()) from None
    finally:
        zk_close(client)


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()  # a reader of `--watch` output needs each event as it happens


def print_table(columns: tuple[str, ...], cells: list[tuple[str, ...]]) -> None:
    """A plain table: columns padded to their widest cell."""
    table = [columns] + cells
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def format_duration(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 86400}d{s % 86400 // 3600}h"
        if s >= 86400
        else f"{s // 3600}h{s % 3600 // 60}m"
        if s >= 3600
        else f"{s // 60}m{s % 60}s"
    )
