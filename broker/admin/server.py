"""The admin API's HTTP server, bound to ``dashboard.listeners.http.bind``.

Logs ``admin api on <host>:<port>`` (the real address, port 0 resolved) at INFO on ``wharf.admin`` once up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from ..config.loader import is_loopback, parse_bind
from .api import APP_KEY, add_routes
from .auth import TokenSource, auth_middleware, loopback_guard_middleware
from .site import start_site

if TYPE_CHECKING:
    from ..app import BrokerApp

log = logging.getLogger("wharf.admin")


def build_application(broker_app: "BrokerApp") -> web.Application:
    tokens = TokenSource(broker_app.config.dashboard)
    app = web.Application(middlewares=[loopback_guard_middleware(tokens), auth_middleware(tokens)],
                          client_max_size=1024 * 1024)
    app[APP_KEY] = broker_app
    add_routes(app)
    from ..dashboard.views import mount
    mount(app, broker_app)  # the web Dashboard, under /dashboard/ (its own session login)
    return app


class AdminServer:
    def __init__(self, broker_app: "BrokerApp") -> None:
        self.broker_app = broker_app
        self.dashboard = broker_app.config.dashboard
        self.address = self.dashboard.listeners.http.bind
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        host, _port = parse_bind(self.dashboard.listeners.http.bind)
        tokens = TokenSource(self.dashboard)
        # The loader refuses this too; checked again here because nothing may open the API by accident.
        if not is_loopback(host) and not tokens.configured:
            raise PermissionError(f"refusing to serve the admin API on {self.address} without dashboard.token")
        self._runner, self.address = await start_site(build_application(self.broker_app),
                                                      self.dashboard.listeners.http.bind)
        log.info("admin api on %s", self.address)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
