"""The lifecycle every daemon shares: coordinator, agent and relay each run inside one
``Harness``.

It holds what they all need and tears it down in reverse order however the run ends:
the ZeroMQ context and its sockets, CURVE's authenticator, the ZooKeeper session, the
Prometheus endpoint, the waker that other threads and signal handlers post to, and
systemd's notifier. A daemon adds its own teardown with ``on_close``. Its decisions
stay in its loop and policy classes: the harness makes none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
from kazoo.client import KazooClient
from zmq.auth.thread import ThreadAuthenticator

from cluster.runtime import loop
from cluster.runtime.sdnotify import Notifier
from cluster.runtime.zk import close as zk_close
from cluster.runtime.zk import connect as zk_connect

if TYPE_CHECKING:
    from cluster.runtime.metrics import Metrics

log = logging.getLogger(__name__)

STOP = "stop"  # the event ``Harness.stop`` posts


class AllowList:
    """ZAP credentials provider: a fixed set of public keys per domain. Each
    rejected key is logged once and counted, however often it retries."""

    def __init__(self, allowed: dict[str, set[bytes]]):
        self.allowed = allowed
        self.rejected: dict[bytes, int] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed.get(domain, set()):
            return True
        if key not in self.rejected:
            log.warning("rejected a peer with an unknown CURVE key on %s (public key %s...)", domain, key[:8].hex())
        self.rejected[key] = self.rejected.get(key, 0) + 1
        return False


class Harness:
    def __init__(self) -> None:
        self.waker = loop.Waker()
        self.notifier = Notifier()
        self.ctx = zmq.Context()
        self.zk: KazooClient | None = None
        self.metrics: Metrics | None = None
        self.allow_list: AllowList | None = None
        self._cleanups: list[Callable[[], Any]] = []

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask the daemon's loop to stop: safe from any thread or a signal handler."""
        self.waker.post((STOP, None))

    def on_close(self, cleanup: Callable[[], Any]) -> None:
        """Run ``cleanup`` at close, before everything registered earlier."""
        self._cleanups.append(cleanup)

    def socket(
        self, kind: int, *, max_payload: int, routing_id: bytes | None = None, hwm: int = 100_000
    ) -> zmq.Socket[Any]:
        """A socket configured as every daemon's are (linger 0, payload limit, high-water
        marks); a ROUTER is mandatory (an unknown peer is an error, not a silent drop)."""
        sock = loop.configure(self.ctx.socket(kind), hwm=hwm, max_payload=max_payload)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.on_close(lambda: sock.close(0))
        return sock

    def watch_disconnects(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        monitor = loop.watch_disconnects(sock)
        self.on_close(lambda: monitor.close(0))
        return monitor

    def authenticate(self, allowed: dict[str, set[bytes]]) -> AllowList:
        """Check CURVE peers against ``allowed`` (public keys by ZAP domain), on the
        authenticator's own thread and socket (pyzmq's ThreadAuthenticator)."""
        auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("cluster.zap"))
        auth.start()
        self.on_close(auth.stop)
        self.allow_list = AllowList(allowed)
        for domain in allowed:
            auth.configure_curve_callback(domain, credentials_provider=self.allow_list)
        return self.allow_list

    def connect_zookeeper(self, hosts: str, *, session_timeout: float, auth_file: str) -> KazooClient:
        self.zk = zk = zk_connect(hosts, timeout=10.0, session_timeout=session_timeout, auth_file=auth_file)
        self.on_close(lambda: zk_close(zk))
        return zk

    def serve_metrics(self, port: int, bind: str) -> Metrics | None:
        """The Prometheus endpoint on ``bind``'s host, or None when ``port`` is 0 (off)."""
        if not port:
            return None
        from cluster.runtime.metrics import Metrics  # only daemons that export metrics need the library

        self.metrics = metrics = Metrics(port, loop.bind_host(bind))
        self.on_close(metrics.stop)
        log.info("metrics on port %d", metrics.port)
        return metrics

    def close(self) -> None:
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception:  # one failing step must not leave the others undone
                log.exception("while stopping")
        self.ctx.term()
        self.waker.close()
