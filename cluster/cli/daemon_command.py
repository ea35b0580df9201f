"""What `clusterctl coordinator`, `clusterctl agent` and `clusterctl relay` do alike: take
every setting of the daemon as a flag, load the config, set up logging, turn SIGTERM and
SIGINT into a stop (or a drain), report a known failure in one line, and exit with the
daemon's status."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Optional, Protocol, TypeVar

import typer

from cluster.cli import common, options
from cluster.contract import config


class Daemon(Protocol):
    def run(self) -> int: ...


C = TypeVar("C", bound=config.Common)
D = TypeVar("D", bound=Daemon)


def daemon_command(
    cls: type[C],
    start: Callable[[C], D],
    *,
    stop: Callable[[D], object],
    refused: tuple[type[Exception], ...] = (),
) -> Callable[..., None]:
    """A typer command that runs ``start(config)`` in the foreground; a signal calls
    ``stop(daemon)``, and an exception of ``refused`` is one line and exit status 2."""

    @options.with_settings(cls)
    def command(
        *,
        config_file: Optional[str] = common.CONFIG,
        settings: options.Settings,
        log_level: str = common.LOG_LEVEL,
        log_format: str = common.LOG_FORMAT,
    ) -> None:
        common.setup_logging(log_level, log_format)
        with common.clear_errors():
            node = start(config.load(cls, config_file, settings))
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop(node))
            try:
                code = node.run()
            except refused as exc:
                raise common.fail(str(exc)) from None
        raise typer.Exit(code)

    return command
