"""Who may open the dashboard: anyone on this host while it binds loopback only; with
the token on any other address (as Jupyter does). The token comes once in the URL
(``?token=``), which sets a cookie, or in every request's ``Authorization: Bearer``
header (scripts); it is compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

COOKIE = "clusterd_dashboard"
OPEN_PATHS = ("/healthz",)  # a reverse proxy's or systemd's health check carries no token


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(host: str, given: str) -> str:
    """The token to require: the one given, else a new one off loopback, else none."""
    if given:
        return given
    return "" if loopback(host) else secrets.token_urlsafe(24)


def cookie_name(token: str) -> str:
    """Cookies are shared by every port of a host: each dashboard's is named after its
    token, so two dashboards on one host do not overwrite each other's."""
    return f"{COOKIE}_{hashlib.sha256(token.encode()).hexdigest()[:12]}"


def presented(request: web.Request, cookie: str) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value:
        return value.strip()
    return request.query.get("token") or request.cookies.get(cookie)


def middleware(token: str, secure: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    cookie = cookie_name(token)

    @web.middleware
    async def check(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not token or request.path in OPEN_PATHS:
            return await handler(request)
        given = presented(request, cookie)
        if given is None:
            raise web.HTTPUnauthorized(text="this dashboard needs its token: open the URL it printed (?token=...)\n")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPForbidden(text="wrong token\n")
        if "token" in request.query:
            # Once in the URL, then a cookie: the token leaves the address bar and the history.
            # A relative Location, so that behind a proxy's sub-path the browser stays in it.
            query = urlencode([(k, v) for k, v in request.query.items() if k != "token"])
            here = request.path.rsplit("/", 1)[1] or "./"
            response = web.HTTPFound(here + (f"?{query}" if query else ""))
            response.set_cookie(cookie, token, httponly=True, samesite="Strict", secure=secure)
            raise response
        return await handler(request)

    return check
