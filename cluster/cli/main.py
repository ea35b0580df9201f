"""``clusterctl``: one typer app, one module per command."""

from __future__ import annotations

import os
import sys

import typer

from . import coordinator_cmd, drain, keys, nodes, status, submit, up

app = typer.Typer(
    help="Run Python functions and shell commands over a cluster of machines.\n\n"
    "Quick start on one machine:  clusterctl up   (then, in another terminal)\n"
    "  CLUSTER_ZK=127.0.0.1:PORT clusterctl submit mymod:f --range 0 100",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    help="Run a node agent in the foreground (see `clusterctl agent --help`).",
)
def agent(ctx: typer.Context) -> None:
    # The agent is node-side code (package `agents`), which the client side never
    # imports; it runs as its own program with its own options and --help.
    os.execv(sys.executable, [sys.executable, "-m", "agents", *ctx.args])


app.command(name="coordinator", help=coordinator_cmd.__doc__)(coordinator_cmd.coordinator)
app.command(name="submit", help=submit.__doc__)(submit.submit)
app.command(name="nodes", help=nodes.__doc__)(nodes.nodes)
app.command(name="up", help=up.__doc__)(up.up)
app.command(name="drain", help=drain.__doc__)(drain.drain)
app.command(name="status", help=status.__doc__)(status.status)
app.add_typer(keys.app, name="keys", help="CURVE keys for a secured cluster (`clusterctl keys generate --out DIR`).")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
