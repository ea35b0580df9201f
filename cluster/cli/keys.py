"""CURVE keys for a secured cluster.

`generate` writes a key pair per role into DIR: coordinator, agent and client
(NAME.key public, NAME.key_secret private with mode 0600). Copy to each machine
only what its role needs:

  coordinator hosts: coordinator.key, coordinator.key_secret, agent.key, client*.key
  agent hosts:       agent.key, agent.key_secret, coordinator.key
  users:             client.key, client.key_secret, coordinator.key

Every client*.key in the coordinator's directory is allowed, which is how client
keys are added and rotated. Then run every command with --keys DIR (or CLUSTER_KEYS).

A client key's name owns the jobs submitted with it: give each user a key of their own
with `keys client NAME` (client-NAME.key), and list in a file `admins` beside the keys the
names that may read and cancel anyone's jobs (docs/jobs.md, "Owners").

Examples:

  clusterctl keys generate --out /etc/clusterd/keys
  clusterctl keys client alice --out /etc/clusterd/keys
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


@app.command()
def client(
    name: str = typer.Argument(..., help="The key's name: the user (or service) whose jobs it will own."),
    out: Path = typer.Option(..., "--out", help="Directory to write the key into (created 0700)."),
    force: bool = typer.Option(False, "--force", help="Replace the key if it exists."),
) -> None:
    """Write a client key pair of its own for one user: client-NAME.key and .key_secret.

    Copy client-NAME.key to the coordinators' keys directory (every client*.key there is
    allowed), and give the user both files and coordinator.key, in a directory of their own.

    Example:  clusterctl keys client alice --out /etc/clusterd/keys
    """
    with common.clear_errors():
        written = security.generate_client(out, name, force=force)
    for path in written:
        typer.echo(str(path))
