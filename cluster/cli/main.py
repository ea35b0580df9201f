"""``clusterctl``: one typer app, one module per command."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

import typer

from cluster.cli import common, coordinator_cmd, drain, install, jobs, keys, nodes, options, status, submit, up
from cluster.cli.dashboard import app as dashboard_app
from cluster.runtime import malloc

app = typer.Typer(
    help="Run Python functions and shell commands over a cluster of machines.\n\n"
    "Quick start on one machine:  clusterctl up   (then, in another terminal)\n"
    "  CLUSTER_ZK=127.0.0.1:PORT clusterctl submit mymod:f --range 0 100",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


NODE_SIDE = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


PROGRAMS = "clusterd.programs"  # entry points of the node-side programs (pyproject.toml)


def _node_program(ctx: typer.Context, role: str) -> None:
    """The agent and the relay are node-side code, which the client side never imports by
    name: the node side registers each program as an entry point, found here when asked for.
    Installing either is client-side file work (cluster.cli.install)."""
    if ctx.args[:1] in (["install"], ["uninstall"]):
        service = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        install.add_commands(service, role)
        service(args=ctx.args, prog_name=f"clusterctl {role}")  # exits
    found = entry_points(group=PROGRAMS, name=role)
    if not found:
        raise common.fail(
            f"the {role} program is not installed here (no {PROGRAMS} entry point {role!r}); "
            "install the clusterd-zk package on this node"
        )
    next(iter(found)).load()(ctx.args)  # exits with the program's status


@app.command(
    context_settings=NODE_SIDE,
    help="Run a node agent in the foreground (see `clusterctl agent --help`), or set it up as a systemd "
    "service: `clusterctl agent install|uninstall` (see `clusterctl agent install --help`).",
)
def agent(ctx: typer.Context) -> None:
    _node_program(ctx, "agent")


@app.command(
    context_settings=NODE_SIDE,
    help="Run a relay in the foreground (see `clusterctl relay --help`): the coordinator reaches the agents "
    "started with `--relay ID` through it, over one connection. As a systemd service: "
    "`clusterctl relay install|uninstall` (see `clusterctl relay install --help`).",
)
def relay(ctx: typer.Context) -> None:
    _node_program(ctx, "relay")


def _coordinator(**values: Any) -> None:
    # `clusterctl coordinator [OPTIONS]` runs it; `clusterctl coordinator install ...` is a
    # subcommand of the same group, and then this callback must do nothing.
    ctx: typer.Context = values[options.CONTEXT]
    if ctx.invoked_subcommand is None:
        coordinator_cmd.coordinator(**values)
    elif any(getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT" for name in values):
        raise common.fail(f"options go after the command: clusterctl coordinator {ctx.invoked_subcommand} [OPTIONS]")


# The group's options are the coordinator's own (typer reads them from this signature,
# which includes the context parameter cluster/cli/options.py gives every generated command).
_coordinator.__signature__ = inspect.signature(coordinator_cmd.coordinator)  # type: ignore[attr-defined]

coordinator_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
coordinator_app.callback(
    invoke_without_command=True,
    help=coordinator_cmd.__doc__
    + "\nAs a systemd service: `clusterctl coordinator install|uninstall` (see their --help).",
)(_coordinator)
install.add_commands(coordinator_app, "coordinator")
app.add_typer(coordinator_app, name="coordinator")
app.command(name="submit", help=submit.__doc__)(submit.submit)
app.command(name="nodes", help=nodes.__doc__)(nodes.nodes)
app.command(name="up", help=up.__doc__)(up.up)
app.command(name="drain", help=drain.__doc__)(drain.drain)
app.command(name="status", help=status.__doc__)(status.status)
app.command(name="jobs", help=jobs.__doc__)(jobs.jobs)
app.add_typer(jobs.app, name="job")
app.add_typer(dashboard_app, name="dashboard")
app.add_typer(keys.app, name="keys", help="CURVE keys for a secured cluster (`clusterctl keys generate --out DIR`).")


def main() -> None:
    malloc.tune()  # payloads one after another: keep freed memory for the next (cluster/runtime/malloc.py)
    app()


if __name__ == "__main__":
    main()
