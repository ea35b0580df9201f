"""Connecting to ZooKeeper with a deadline and an error a person can act on."""

from __future__ import annotations

import logging

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

log = logging.getLogger(__name__)


class ZooKeeperUnreachable(RuntimeError):
    pass


def connect(hosts: str, timeout: float = 10.0, session_timeout: float = 10.0) -> KazooClient:
    """A started KazooClient, or ZooKeeperUnreachable within ``timeout`` seconds.

    kazoo retries forever by default; a person running a command wants to hear
    within seconds that the address is wrong or the ensemble is down.
    """
    client = KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 2},
        logger=logging.getLogger("kazoo"),
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
    return client


def _close(client: KazooClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception:  # closing a client that never connected can raise; nothing to keep
        pass


def close(client: KazooClient | None) -> None:
    if client is not None:
        _close(client)
