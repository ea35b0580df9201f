"""The dashboard's process: an aiohttp server, the ZooKeeper watches, and a pump that asks
the leader for its status (once a second while a browser watches, rarely otherwise) and
streams what changed to every browser as server-sent events.

It is a client of the cluster like `clusterctl status`, never part of the coordinator:
a page that is slow to read costs the dispatch loop nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from cluster.contract.layout import LeaderRecord
from cluster.dashboard import access, jobs_detail
from cluster.dashboard.model import State
from cluster.dashboard.sources import Watches, leader_status

log = logging.getLogger("cluster.dashboard")

STATIC = Path(__file__).parent / "static"
WATCHED_POLL = 1.0  # seconds between status requests while a browser watches
FLUSH = 0.25  # seconds between looks for ZooKeeper news to send
KEEPALIVE = 15.0  # an SSE comment this often: proxies and browsers keep an idle stream open
QUEUE = 64  # patches a browser may fall behind before it is dropped (it reconnects to a snapshot)


@dataclass(frozen=True, kw_only=True)
class Options:
    zk: str
    cluster: str
    keys: str = ""
    zk_auth: str = ""
    host: str = "127.0.0.1"
    port: int = 8470
    token: str = ""
    certfile: str = ""
    keyfile: str = ""
    idle_poll: float = 10.0  # seconds between status requests while no browser watches (0: none)


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Hub:
    """The browsers' streams: each gets the snapshot when it connects, then every patch."""

    def __init__(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        self.state, self.loop = state, loop
        self.streams: set[asyncio.Queue[bytes | None]] = set()
        self.watched = asyncio.Event()  # set while a browser watches: the pump polls faster
        self.stale = False  # the state took news since the last patch

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """From any thread: apply ``fn(*args)`` to the state on the loop's thread."""
        self.loop.call_soon_threadsafe(self.apply, fn, *args)

    def apply(self, fn: Callable[..., None], *args: Any) -> None:
        fn(*args)
        self.stale = True

    def flush(self) -> None:
        if not self.stale:  # nothing new: 5,000 rows are not compared again for nothing
            return
        self.stale = False
        patch = self.state.patch(time.time())
        if patch is None or not self.streams:
            return
        message = sse("patch", patch)
        for queue in list(self.streams):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # too slow a reader: it starts over from a snapshot
                self.streams.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    def subscribe(self) -> tuple[asyncio.Queue[bytes | None], bytes]:
        self.flush()  # what happened before is in the snapshot, all that follows in patches
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
        self.streams.add(queue)
        self.watched.set()
        return queue, sse("snapshot", self.state.snapshot(time.time()))

    def close(self) -> None:
        """End every stream: a server that stops does not wait for its browsers to leave."""
        for queue in list(self.streams):
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)
        self.streams.clear()

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.streams.discard(queue)
        if not self.streams:
            self.watched.clear()


class Pump:
    """Asks the leader for its status on a thread (the request blocks) and flushes patches."""

    def __init__(self, opts: Options, state: State, hub: Hub) -> None:
        self.opts, self.state, self.hub = opts, state, hub

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll, watched = 0.0, False
        while True:
            if bool(self.hub.streams) != watched:
                watched, next_poll = not watched, 0.0  # a first browser sees the status at once
            interval = WATCHED_POLL if watched else self.opts.idle_poll
            if interval and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + interval
                await self._poll(loop)
            # Unwatched too (once a second at most): news goes into what the next browser's
            # snapshot holds, and nothing piles up for patches no browser will read.
            self.hub.flush()
            if watched:
                await asyncio.sleep(FLUSH)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hub.watched.wait(), 1.0)

    async def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        leader: LeaderRecord | None = self.state.leader
        if leader is None:
            self.hub.apply(self.state.status_failed, "no coordinator leads the cluster")
            return
        try:
            status = await loop.run_in_executor(None, leader_status, leader, self.opts.keys, 2.0)
        except (ValueError, OSError) as exc:
            self.hub.apply(self.state.status_failed, str(exc))
            return
        self.hub.apply(self.state.status_seen, status, time.time())


# ------------------------------------------------------------------ HTTP


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def events(request: web.Request) -> web.StreamResponse:
    hub: Hub = request.app["hub"]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on as it comes
        }
    )
    await response.prepare(request)
    queue, snapshot = hub.subscribe()
    try:
        await response.write(snapshot)
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                message = b": keep-alive\n\n"
            if message is None:  # dropped for falling behind
                break
            await response.write(message)
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away mid-stream
    finally:
        hub.unsubscribe(queue)
    return response


async def job(request: web.Request) -> web.Response:
    try:
        job_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such job\n") from None
    app = request.app
    try:
        detail = await asyncio.get_running_loop().run_in_executor(
            None, jobs_detail.detail, app["zk"], app["opts"].cluster, job_id, app["opts"].keys
        )
    except (KazooException, KazooTimeoutError) as exc:
        raise web.HTTPServiceUnavailable(text=f"ZooKeeper did not answer: {type(exc).__name__}\n") from None
    if detail is None:
        raise web.HTTPNotFound(text=f"no job {job_id}\n")
    return web.json_response(detail)


# The page loads nothing but its own files, and no other site may frame it (clickjacking).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)


def make_app(opts: Options, state: State, hub: Hub, zk: Any, token: str) -> web.Application:
    app = web.Application(middlewares=[access.middleware(token, bool(opts.certfile))])
    app["opts"], app["state"], app["hub"], app["zk"] = opts, state, hub, zk
    app.on_response_prepare.append(secure_headers)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", health)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/jobs/{id}", job)
    app.router.add_static("/static/", STATIC)
    return app


def url(opts: Options, port: int, token: str) -> str:
    """The address to open, as printed: on every interface, this host's name."""
    scheme = "https" if opts.certfile else "http"
    host = socket.gethostname() if opts.host in ("0.0.0.0", "::") else opts.host
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}/" + (f"?token={token}" if token else "")


async def serve(opts: Options, zk: Any, token: str, ready: Callable[[int], None]) -> None:
    """Serve until cancelled; ``ready(port)`` once listening (the port the kernel chose for 0)."""
    loop = asyncio.get_running_loop()
    state = State()
    hub = Hub(state, loop)
    watches = Watches(zk, opts.cluster, state, hub.post)
    await loop.run_in_executor(None, watches.start)
    context = None
    if opts.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(opts.certfile, opts.keyfile or None)
    runner = web.AppRunner(make_app(opts, state, hub, zk, token), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port, ssl_context=context, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pump = asyncio.create_task(Pump(opts, state, hub).run())
    ready(port)
    try:
        await asyncio.Future()
    finally:
        pump.cancel()
        hub.close()
        watches.stop()
        await runner.cleanup()
