"""Bearer-token authentication for the admin API.

The token comes from ``dashboard.token_file`` (re-read when the file changes, so a rotated Secret takes effect
without a restart) or ``dashboard.token``. With neither configured the API is open, which the config loader
only allows on a loopback bind.
"""

from __future__ import annotations

import hmac
import logging
import os

from aiohttp import web

from ..config.model import Dashboard

log = logging.getLogger("wharf.admin")

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
