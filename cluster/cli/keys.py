"""CURVE keys for a secured cluster.

`generate` writes a key pair per role into DIR: coordinator, agent and client
(NAME.key public, NAME.key_secret private with mode 0600). Copy to each machine
only what its role needs:

  coordinator hosts: coordinator.key, coordinator.key_secret, agent.key, client*.key
  agent hosts:       agent.key, agent.key_secret, coordinator.key
  users:             client.key, client.key_secret, coordinator.key

Every client*.key in the coordinator's directory is allowed, which is how client
keys are added and rotated. Then run every command with --keys DIR (or CLUSTER_KEYS).

Examples:

  clusterctl keys generate --out /etc/clusterd/keys
"""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli import common
from cluster.contract import security

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="Directory to write the keys into (created 0700)."),
    force: bool = typer.Option(False, "--force", help="Replace keys that already exist."),
) -> None:
    """Write CURVE key pairs for the coordinator, agent and client roles.

    Example:  clusterctl keys generate --out /etc/clusterd/keys
    """
    with common.clear_errors():
        written = security.generate(out, force=force)
    for path in written:
        typer.echo(str(path))
