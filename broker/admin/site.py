"""What the admin API's server and the read-only metrics port share: serving an aiohttp application on a
``host:port`` bind (the real address back, port 0 resolved) and the Prometheus text of ``/metrics``."""

from __future__ import annotations

from aiohttp import web

from .. import metrics
from ..config.loader import format_bind, parse_bind

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics_text(request: web.Request) -> web.Response:
    return web.Response(body=metrics.REGISTRY.exposition().encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def start_site(app: web.Application, bind: str) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``bind``; the runner (``cleanup()`` stops it) and the address it listens on."""
    host, port = parse_bind(bind)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host or None, port, reuse_address=True).start()
    addresses = runner.addresses
    return runner, format_bind(addresses[0][0], addresses[0][1]) if addresses else bind
