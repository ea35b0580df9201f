"""CURVE keys for the three roles, and applying them to sockets.

A keys directory holds ZeroMQ certificates (``zmq.auth`` format):
``coordinator.key`` / ``.key_secret``, ``agent.key`` / ``.key_secret``, and one or
more client keys (``client.key``, ``client-alice.key``, ...; every ``client*.key``
is on the coordinator's allow-list, which is how keys are rotated). Each process
loads only the secret it needs. Secret files must not be readable by group or
others; key material never travels on a command line and is never logged.

Who authenticates whom:
- client -> coordinator: the coordinator's client port is the CURVE server; it
  accepts only allow-listed client keys; clients pin the coordinator's key.
- coordinator -> agent: each agent's endpoint is the CURVE server; it accepts only
  the coordinator key; the coordinator pins the agent key.

A client key has a name, which is who owns the jobs submitted with it: ``client-alice.key``
is alice's, ``client.key`` (the one ``generate`` writes) is named "client". A user's own
keys directory holds one client secret, which is the one its commands use. The
file ``admins`` beside the keys lists, one per line, the key names that may read and
cancel anyone's jobs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path

import zmq
import zmq.auth

from cluster.contract import layout

log = logging.getLogger("cluster.security")

ROLES = ("coordinator", "agent", "client")
ADMINS = "admins"  # the file of key names that may act on anyone's jobs


class KeyFileError(ValueError):
    """A missing, unreadable or too-open key file (a usage error, exit 2)."""


@dataclasses.dataclass(frozen=True)
class Keys:
    role: str
    public: bytes
    secret: bytes
    coordinator: bytes  # public keys of the peers this role talks to (empty when not needed)
    agent: bytes
    clients: tuple[bytes, ...]  # the coordinator's allow-list
    name: str = ""  # a client key's name: who owns the jobs it submits


def generate(out: str | Path, force: bool = False) -> list[Path]:
    """Write a key pair per role; secrets 0600, the directory 0700."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    existing = [out / f"{r}.key_secret" for r in ROLES if (out / f"{r}.key_secret").exists()]
    if existing and not force:
        raise KeyFileError(f"{existing[0]} already exists; use --force to replace the keys in {out}")
    written = []
    for role in ROLES:
        public, secret = zmq.auth.create_certificates(out, role)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        written += [Path(public), Path(secret)]
    return written


def generate_client(out: str | Path, name: str, force: bool = False) -> list[Path]:
    """Write the client key pair ``client-NAME`` (the key of one user or service)."""
    out = Path(out)
    layout.check_name(name, "client key name")
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    stem = f"client-{name}"
    if (out / f"{stem}.key_secret").exists() and not force:
        raise KeyFileError(f"{out / stem}.key_secret already exists; use --force to replace it")
    public, secret = zmq.auth.create_certificates(out, stem)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return [Path(public), Path(secret)]


def key_name(path: Path) -> str:
    """The name of the client key in ``path`` (client-NAME.key or client.key)."""
    stem = path.name.split(".", 1)[0]
    return stem.removeprefix("client-") if stem.startswith("client-") else stem


def client_secret(directory: Path) -> Path:
    """The client secret a command uses: ``client.key_secret`` where ``generate`` wrote it
    (the directory the keys were made in), else the one ``client-NAME.key_secret``."""
    plain = directory / "client.key_secret"
    named = sorted(directory.glob("client-*.key_secret"))
    if plain.exists() or not named:
        return plain
    if len(named) > 1:
        names = ", ".join(p.name for p in named)
        raise KeyFileError(
            f"{directory} holds several client secrets ({names}): keep only your own in your keys directory"
        )
    return named[0]


def client_names(directory: str | Path) -> dict[bytes, str]:
    """Each allowed client public key in ``directory``, with its name."""
    return {_public(path): key_name(path) for path in sorted(Path(directory).glob("client*.key"))}


def admins(directory: str | Path) -> frozenset[str]:
    """The key names listed in ``DIR/admins`` (none when there is no such file)."""
    try:
        text = (Path(directory) / ADMINS).read_text()
    except FileNotFoundError:
        return frozenset()
    except OSError as exc:
        raise KeyFileError(f"cannot read {Path(directory) / ADMINS}: {exc.strerror}") from None
    return frozenset(line.split("#", 1)[0].strip() for line in text.splitlines()) - {""}


def check_private(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"secret key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); fix it with: chmod 600 {path}"
        )


def _public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load public key {path}: {exc}") from None
    return public


def load(directory: str | Path, role: str, with_clients: bool = True) -> Keys:
    """A role's key pair and the public keys of its peers. ``with_clients=False``: the
    coordinator's pair without its client allow-list (a relay connecting to agents)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"keys directory {directory} does not exist (create one with `clusterctl keys generate`)")
    secret_file = client_secret(directory) if role == "client" else directory / f"{role}.key_secret"
    check_private(secret_file)
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load secret key {secret_file}: {exc}") from None
    if secret is None:
        raise KeyFileError(f"{secret_file} holds no secret key")
    # Each role needs only the public keys of the peers it talks to.
    coordinator = _public(directory / "coordinator.key") if role in ("agent", "client") else public
    agent = _public(directory / "agent.key") if role == "coordinator" else b""
    allowed = role == "coordinator" and with_clients
    clients = tuple(_public(p) for p in sorted(directory.glob("client*.key"))) if allowed else ()
    if allowed and not clients:
        raise KeyFileError(f"no client keys (client*.key) in {directory}: no client could submit work")
    name = key_name(secret_file) if role == "client" else ""
    return Keys(role, public, secret, coordinator, agent, clients, name)


def serve(sock: zmq.Socket, keys: Keys, domain: str) -> None:
    """Make a bound socket a CURVE server whose peers ZAP checks under ``domain``."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = domain.encode()


def connect_to(sock: zmq.Socket, keys: Keys, server_public: bytes) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_public


def for_daemon(keys_dir: str, insecure: bool, role: str) -> Keys | None:
    """The keys a daemon runs with, or None in explicit insecure mode."""
    if keys_dir:
        return load(keys_dir, role)
    if not insecure:
        raise KeyFileError(
            f"no CURVE keys for the {role}: give --keys DIR (env CLUSTER_KEYS; create them with "
            "`clusterctl keys generate --out DIR`), or --insecure to run unauthenticated on a trusted network"
        )
    log.warning("%s running WITHOUT CURVE keys (--insecure): anyone who reaches its port can run code", role)
    return None
