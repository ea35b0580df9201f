"""Pieces every socket-owning loop needs: a waker for other threads, safe sends,
and the endpoint helpers.

One thread owns a process's sockets. Other threads (kazoo callbacks, signal
handlers) put an event on a queue and poke an eventfd that the loop's poller
watches. An eventfd rather than an inproc PAIR socket, because any number of
threads may poke it and a ZeroMQ socket must not be shared between threads.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import time
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import parse_monitor_message

from cluster.contract import wire
from cluster.contract.wire import ZERO_COPY_MIN, Message

log = logging.getLogger(__name__)


class Waker:
    def __init__(self) -> None:
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pending = False

    def post(self, event: Any) -> None:
        self.events.put(event)
        # One wake-up per burst: while one is pending, the loop reads this event too.
        # 5,000 agents joining cost a few eventfd writes, not 5,000 GIL-releasing
        # syscalls that each wait for the busy loop thread to let go of the GIL.
        if not self._pending:
            self._pending = True
            os.eventfd_write(self.fd, 1)

    def drain(self) -> list[Any]:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        # After consuming the wake-up and before reading the queue: a post that saw
        # "pending" put its event before this line, so the loop below reads it; any
        # later post writes the eventfd again.
        self._pending = False
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        os.close(self.fd)


def poll_ms(deadline: float) -> int:
    """Milliseconds from now to ``deadline`` for a poll, rounded up: pyzmq truncates
    0.7 ms to 0, and a loop would spin through the last millisecond before each timer."""
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


# Plain ints: pyzmq's send_multipart ORs enum flags for every frame, a quarter of
# the cost of a small send (docs/performance.md, "Figures behind the code").
_MORE = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


Route = bytes | tuple[bytes, ...]  # a peer's routing id; (relay, agent) for an agent behind a relay


def send(sock: zmq.Socket, msg: Message, identity: Route | None = None) -> bool:
    """Send without blocking. False when the peer is unknown or its queue is
    full (ROUTER_MANDATORY); the caller keeps the message's work and retries."""
    return send_frames(sock, msg.encode(), identity)


def send_frames(sock: zmq.Socket, frames: list[Any], identity: Route | None = None) -> bool:
    """``send`` of an already encoded message: one heartbeat encoded once goes to thousands of peers.
    Large frames go by reference: a payload received as a view (wire._payload) is
    forwarded without a copy."""
    try:
        if isinstance(identity, tuple):
            for part in identity:
                sock.send(part, _MORE)
        elif identity is not None:
            sock.send(identity, _MORE)
        for frame in frames[:-1]:
            sock.send(*_zero_copy(frame, _MORE))
        sock.send(*_zero_copy(frames[-1], _LAST))
        return True
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise


def _zero_copy(frame: Any, flags: int) -> tuple[Any, int, bool]:
    if len(frame) < ZERO_COPY_MIN:
        return frame, flags, True
    if isinstance(frame, memoryview) and isinstance(frame.obj, zmq.Frame):
        return frame.obj, flags, False  # libzmq shares the received message: no copy, no tracking
    return frame, flags, False


def recv_frames(sock: zmq.Socket) -> list[zmq.Frame]:
    """``recv_multipart(NOBLOCK, copy=False)`` without its getsockopt and enum flags
    per frame, which cost half of receiving a heartbeat. Raises zmq.Again when nothing waits;
    the rest of a message is always there once its first frame is."""
    frame = sock.recv(_LAST, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(_LAST, copy=False)
        frames.append(frame)
    return frames


def read_router(
    sock: zmq.Socket,
    handle: Callable[[Any, Message], None],
    bad: Callable[[Any, str], None],
    limit: int = 1000,
    relays: Container[bytes] = (),
) -> None:
    """Decode what a ROUTER socket has waiting and hand each message to ``handle``.

    Malformed frames go to ``bad`` and the loop goes on; a peer speaking another
    protocol version is also told so. Bounded, so one busy socket cannot starve
    the loop's other steps. A message from a peer in ``relays`` carries the routing id
    of the agent it comes from next: it is handed on with the route (relay, agent)."""
    for _ in range(limit):
        try:
            frames = recv_frames(sock)
        except zmq.Again:
            return
        sender: bytes = frames[0].bytes
        identity: Route = sender
        body = 1
        if sender in relays:
            if len(frames) < 3:
                bad(sender, "a relayed message without an agent's routing id")
                continue
            identity, body = (sender, frames[1].bytes), 2
        try:
            msg = wire.decode(frames[body:])
        except wire.ProtocolVersionMismatch as exc:
            bad(identity, str(exc))
            send(sock, wire.Refused(str(exc), wire.Refusal.PROTOCOL_VERSION), identity)
            continue
        except wire.ProtocolError as exc:
            bad(identity, str(exc))
            continue
        handle(identity, msg)


def watch_disconnects(sock: zmq.Socket) -> zmq.Socket:
    """A socket that reports each connection of ``sock`` that closes (``disconnected``).
    A process that dies, even by kill -9, has its sockets closed by its kernel: the
    peer learns it in milliseconds, where heartbeats take their whole deadline."""
    return sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)


def disconnected(monitor: zmq.Socket) -> list[str]:
    """The endpoints whose connections closed since the last call (endpoints as given to
    ``connect``). An event that cannot be read is skipped: it only makes us wait for
    heartbeats."""
    out = []
    for _ in range(10_000):
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        try:
            event = parse_monitor_message(frames)
        except (RuntimeError, ValueError):
            continue
        if event["event"] == zmq.EVENT_DISCONNECTED:
            out.append(event["endpoint"].decode(errors="replace"))
    return out


T = TypeVar("T")


def batches(items: Iterable[T], size: Callable[[T], int], max_bytes: int, max_count: int = 0) -> Iterator[list[T]]:
    """Consecutive runs of items for one message each: at most ``max_count`` items (0: any
    number) and ``max_bytes`` by ``size``, except that an item larger than that goes alone."""
    run: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if run and (len(run) == max_count or total + n > max_bytes):
            yield run
            run, total = [], 0
        run.append(item)
        total += n
    if run:
        yield run


def bind(sock: zmq.Socket, address: str) -> str:
    """Bind and return the endpoint actually bound (port 0 becomes a real port)."""
    if address.startswith("tcp://") and address.rsplit(":", 1)[-1] in ("0", "*"):
        host = address[len("tcp://") :].rsplit(":", 1)[0]
        port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"
    sock.bind(address)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def bind_host(address: str) -> str:
    """The host part of a tcp:// endpoint, as an address to bind other servers to."""
    host = urlsplit(address).hostname or "0.0.0.0"
    return "0.0.0.0" if host == "*" else host


def advertised(bound: str, advertise: str, zk_hosts: str) -> str:
    """The endpoint other machines should connect to."""
    parts = urlsplit(bound)
    port = parts.port
    host = advertise or parts.hostname or ""
    if host in ("", "0.0.0.0", "*", "::"):
        host = route_address(zk_hosts)
    return f"tcp://{host}:{port}"


def route_address(zk_hosts: str) -> str:
    """The local address that routes to ZooKeeper: whoever reaches ZooKeeper can
    most likely reach us there. A UDP connect sends no packet."""
    first = zk_hosts.split(",")[0].split("/")[0]
    host, _, port = first.rpartition(":")
    host = host or first
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host.strip("[]"), int(port or 2181)))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()


def configure(sock: zmq.Socket, hwm: int = 100_000, max_payload: int = wire.MAX_PAYLOAD_DEFAULT) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    # libzmq drops a peer that sends a larger frame before it reaches us; senders
    # check the same limit first so an honest peer gets a clear error instead.
    sock.setsockopt(zmq.MAXMSGSIZE, max_payload + (1 << 20))
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock
