"""The read-only metrics port (``prometheus { enable, bind }``): ``GET /metrics`` and nothing else, no credential.

The admin API serves ``/metrics`` too, behind the admin bearer token, which can also change TLS options: a
Prometheus holding it would hold far more than it needs. This server shares nothing with the admin API but the
metrics registry: no routes of its own but ``/metrics`` (``GET`` and ``HEAD``), no token, no Dashboard, no
request body read. Any other path answers 404 and any other method 405, so it cannot change anything and shows
nothing but the Prometheus text (which holds counters and label values, never key material nor passwords).

Logs ``metrics on <host>:<port>`` (the real address, port 0 resolved) at INFO on ``wharf.admin`` once up.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..config.model import Prometheus
from .site import metrics_text, start_site

log = logging.getLogger("wharf.admin")

ALLOWED = "GET, HEAD"


@web.middleware
async def _only_metrics(request: web.Request, handler):
    """Refuse before routing: another path is 404 whatever the method, another method on /metrics is 405."""
    if request.path != "/metrics":
        return web.json_response({"code": "NOT_FOUND", "message": "this port serves GET /metrics only"},
                                 status=404)
    if request.method not in ("GET", "HEAD"):
        return web.json_response({"code": "METHOD_NOT_ALLOWED", "message": "this port serves GET /metrics only"},
                                 status=405, headers={"Allow": ALLOWED})
    return await handler(request)


def build_application() -> web.Application:
    # A tiny body limit: nothing here reads a body.
    app = web.Application(middlewares=[_only_metrics], client_max_size=1024)
    app.router.add_get("/metrics", metrics_text)  # add_get registers HEAD as well
    return app


class MetricsServer:
    def __init__(self, config: Prometheus) -> None:
        self.address = config.bind
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner, self.address = await start_site(build_application(), self.address)
        log.info("metrics on %s", self.address)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
