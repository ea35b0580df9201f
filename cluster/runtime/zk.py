"""Connecting to ZooKeeper with a deadline and an error a person can act on; requests
bounded in time; reading the leader's record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from cluster.contract import layout
from cluster.contract.layout import ROOT, LeaderRecord

log = logging.getLogger(__name__)


class ZooKeeperUnreachable(RuntimeError):
    pass


def read_credentials(path: str) -> tuple[str, str]:
    """``user:password`` from a file only its owner can read (the ZooKeeper digest)."""
    from cluster.contract.security import check_private  # a file-permission rule shared with the key files

    check_private(Path(path))
    text = Path(path).read_text().strip()
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"{path} must hold one line user:password")
    return user, password


def connect(hosts: str, timeout: float = 10.0, session_timeout: float = 10.0, auth_file: str = "") -> KazooClient:
    """A started KazooClient, or ZooKeeperUnreachable within ``timeout`` seconds.

    kazoo retries forever by default; a person running a command wants to hear
    within seconds that the address is wrong or the ensemble is down.
    """
    acl: dict = {}
    if auth_file:
        # Every znode we create is then readable and writable by these credentials only.
        user, password = read_credentials(auth_file)
        acl = {
            "auth_data": [("digest", f"{user}:{password}")],
            "default_acl": [make_digest_acl(user, password, all=True)],
        }
    client = KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 2},
        logger=logging.getLogger("kazoo"),
        **acl,
    )
    try:
        client.start(timeout=timeout)
    except (KazooTimeoutError, Exception) as exc:
        _close(client)
        detail = "" if isinstance(exc, KazooTimeoutError) else f" ({exc})"
        raise ZooKeeperUnreachable(
            f"cannot reach ZooKeeper at {hosts} within {timeout:g} s{detail}; "
            "check --zk / CLUSTER_ZK and that the ensemble is running"
        ) from None
    if auth_file and not client.exists(ROOT):
        # The shared top folder stays open so clusters with different credentials coexist.
        try:
            client.create(ROOT, acl=OPEN_ACL_UNSAFE)
        except NodeExistsError:
            pass
    return client


def ask(start: Callable[..., Any], *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
    """``start(*args, **kwargs)``'s answer (``start`` is a kazoo ``*_async`` method), waited for
    ``timeout`` s at most (KazooTimeoutError). kazoo's blocking calls hold a request made while
    disconnected until ZooKeeper answers again, which may be never: neither a daemon's loop nor
    a command a script runs may wait that long."""
    return answer(start(*args, **kwargs), timeout)


def answer(request: Any, timeout: float = 10.0) -> Any:
    """The value of a kazoo request already sent (an IAsyncResult), as ``ask``."""
    try:
        return request.get(timeout=timeout)
    except KazooTimeoutError:
        raise KazooTimeoutError(f"ZooKeeper did not answer within {timeout:g} s") from None


def tidy(client: KazooClient, start: Callable[..., Any], *args: Any, timeout: float = 5.0) -> bool:
    """Run a write the cluster can do without (``start`` is a kazoo ``*_async`` method): the
    state or the removal of an ephemeral znode, which a lost session clears anyway, or tidying
    up on the way out. It is not made while disconnected, and one that fails or goes unanswered
    is let go. True if it was done."""
    if not client.connected:
        return False
    try:
        ask(start, *args, timeout=timeout)
    except (KazooException, KazooTimeoutError):  # the timeout is not a KazooException
        return False
    return True


def _close(client: KazooClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception:  # closing a client that never connected can raise; nothing to keep
        pass


def close(client: KazooClient | None) -> None:
    if client is not None:
        _close(client)


def read_leader(zk: KazooClient, cluster: str, timeout: float = 10.0) -> LeaderRecord | None:
    """None if no (readable) leader znode; KazooTimeoutError if ZooKeeper does not answer."""
    try:
        data, _ = ask(zk.get_async, layout.leader_path(cluster), timeout=timeout)
    except KazooException:
        return None
    try:
        return LeaderRecord.from_bytes(data)
    except layout.BadRecord as exc:
        log.warning("ignoring leader znode: %s", exc)
        return None
