"""Bearer-token authentication for the admin API, and what guards it when there is no token.

The token comes from ``dashboard.token_file`` (re-read when the file changes, so a rotated Secret takes effect
without a restart) or ``dashboard.token``. With neither configured the API is open, which the config loader
only allows on a loopback bind; a loopback bind alone does not keep browsers out, so without a token
``loopback_guard_middleware`` serves only requests that are addressed to the loopback server itself:

* ``Host`` must name a loopback address (``127.0.0.1``, ``[::1]``, any 127/8 literal) or ``localhost``, with the
  port the request arrived on. A DNS-rebinding page (``evil.example`` resolved to 127.0.0.1) sends its own name
  and is refused: 403 ``FOREIGN_HOST``.
* ``Origin``, when present, must be ``http://`` plus such a host and port. A cross-site page is refused: 403
  ``FOREIGN_ORIGIN``. ``Origin: null`` (sandboxed frames, ``file:``) is refused on the API; the Dashboard, which
  sends ``Referrer-Policy: no-referrer`` and so may see ``null`` on its own form posts, checks its CSRF token.
* State-changing API requests (anything but GET, HEAD and OPTIONS outside ``/dashboard/``) must not use the
  content types a browser sends cross-site without a preflight (``text/plain``,
  ``application/x-www-form-urlencoded``, ``multipart/form-data``), and a body must be ``application/json``: 415
  ``UNSUPPORTED_MEDIA_TYPE``. The Dashboard's own forms are urlencoded/multipart and carry its CSRF token.

Every refusal counts in ``wharf_admin_requests_refused_total{reason}`` (foreign_host, foreign_origin,
content_type) and is logged at WARNING, at most once per ten seconds per reason.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from urllib.parse import urlsplit

from aiohttp import web

from .. import metrics
from ..config.model import Dashboard

log = logging.getLogger("wharf.admin")

REFUSED = metrics.REGISTRY.counter(
    "wharf_admin_requests_refused_total",
    "Admin API requests refused without a token configured (reason: foreign_host, foreign_origin, content_type)",
    ("reason",))
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a web page may send cross-site without a CORS preflight.
SIMPLE_CONTENT_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
LOG_EVERY = 10.0

# Reachable without a token: probes must work before anyone has a token.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
# The web Dashboard logs people in itself (session cookie + CSRF; see broker/dashboard/sessions.py).
DASHBOARD_PATHS = frozenset({"/", "/dashboard"})  # redirects to /dashboard/; below it: the pages


class TokenSource:
    def __init__(self, dashboard: Dashboard) -> None:
        self._file = dashboard.token_file
        self._static = dashboard.token.encode()
        self._cached: bytes = b""
        self._stamp: tuple[int, int, int] | None = None

    @property
    def configured(self) -> bool:
        return bool(self._file or self._static)

    def current(self) -> bytes:
        if not self._file:
            return self._static
        try:
            stat = os.stat(self._file)
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                with open(self._file, "rb") as handle:
                    self._cached = handle.read().strip()
                self._stamp = stamp
        except OSError as exc:
            # Keep the last good token: a Secret being swapped must not open or lock the API.
            log.warning("cannot read dashboard.token_file %s: %s", self._file, exc)
        return self._cached

    def accepts(self, header: str | None) -> bool:
        expected = self.current()
        if not expected:
            return False  # a configured but empty token never matches
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), expected)


def auth_middleware(tokens: TokenSource):
    @web.middleware
    async def middleware(request: web.Request, handler):
        dashboard = request.path in DASHBOARD_PATHS or request.path.startswith("/dashboard/")
        if tokens.configured and request.path not in PUBLIC_PATHS and not dashboard:
            if not tokens.accepts(request.headers.get("Authorization")):
                return web.json_response({"code": "UNAUTHORIZED", "message": "a valid bearer token is required"},
                                         status=401, headers={"WWW-Authenticate": 'Bearer realm="wharf"'})
        return await handler(request)

    return middleware


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(host, port or None) of a Host header value or URL netloc; None when malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
    elif value.count(":") == 1:
        host, rest = value.split(":", 1)
        rest = ":" + rest
    elif ":" in value:
        return None  # an unbracketed IPv6 literal is not a valid Host
    else:
        host, rest = value, ""
    if rest and (not rest.startswith(":") or not rest[1:].isdigit()):
        return None
    return host.lower().rstrip("."), int(rest[1:]) if rest else None


def local_host_allowed(value: str | None, port: int | None) -> bool:
    """Whether a Host header (or an Origin's netloc) names this loopback server: loopback literal or localhost,
    and ``port`` (a missing port means 80)."""
    if not value or port is None:
        return False
    parsed = _split_host(value)
    if parsed is None:
        return False
    host, given = parsed
    if (given if given is not None else 80) != port:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, port: int | None) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme == "http" and not parts.path and local_host_allowed(parts.netloc, port)


class _Refusals:
    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._counters = {reason: REFUSED.labels(reason=reason)
                          for reason in ("foreign_host", "foreign_origin", "content_type")}

    def refuse(self, request: web.Request, reason: str, status: int, code: str, message: str) -> web.Response:
        self._counters[reason].inc()
        now = time.monotonic()
        if now >= self._next.get(reason, 0.0):
            self._next[reason] = now + LOG_EVERY
            log.warning("admin api: refused %s %s from %s (%s; Host %.80r, Origin %.80r); without dashboard.token "
                        "only requests to the loopback address itself are served", request.method, request.path,
                        request.remote, reason, request.headers.get("Host"), request.headers.get("Origin"))
        return web.json_response({"code": code, "message": message}, status=status)


def _local_port(request: web.Request) -> int | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def loopback_guard_middleware(tokens: TokenSource):
    """Without a token: only requests addressed to this loopback server, and no simple-request bodies on
    state-changing API routes (module docstring). With a token it lets everything through to the token check."""
    refusals = _Refusals()

    @web.middleware
    async def middleware(request: web.Request, handler):
        if tokens.configured:
            return await handler(request)
        port = _local_port(request)
        if not local_host_allowed(request.headers.get("Host"), port):
            return refusals.refuse(request, "foreign_host", 403, "FOREIGN_HOST",
                                   "without dashboard.token the admin API only answers requests to its loopback "
                                   "address (Host: 127.0.0.1, [::1] or localhost, with its port)")
        dashboard = request.path in DASHBOARD_PATHS or request.path.startswith("/dashboard/")
        origin = request.headers.get("Origin")
        if origin is not None and not (origin_allowed(origin, port) or (dashboard and origin == "null")):
            return refusals.refuse(request, "foreign_origin", 403, "FOREIGN_ORIGIN",
                                   "cross-origin requests are refused")
        if not dashboard and request.method not in SAFE_METHODS:
            content_type = request.headers.get("Content-Type")
            mime = request.content_type if content_type else ""
            if mime in SIMPLE_CONTENT_TYPES or (request.body_exists and mime != "application/json"):
                return refusals.refuse(request, "content_type", 415, "UNSUPPORTED_MEDIA_TYPE",
                                       "send the body as application/json")
        return await handler(request)

    return middleware
