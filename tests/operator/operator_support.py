"""A broker pod's admin API played by a real aiohttp server on a loopback address (127.0.0.x, ephemeral port).

It speaks the contract in docs/architecture.md: bearer token, ``POST /api/v5/listeners/{id}/reload`` with an
expected fingerprint (waits until its "files" carry it, else 409; 422 for material it refuses),
``GET .../certificate`` and ``PUT /api/v5/listeners/{id}``. The test plays the kubelet by setting ``files``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FakeBrokerPod:
    name: str
    ip: str
    token: str
    # listener id -> fingerprint the mounted files carry now (what the kubelet projected)
    files: dict[str, str] = field(default_factory=dict)
    # listener id -> fingerprint served
    served: dict[str, str] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)  # listener ids whose reload answers 422
    reloads: list[dict] = field(default_factory=list)
    updates: list[tuple[str, dict]] = field(default_factory=list)
    unauthorized: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    def _authorized(self, request: web.Request) -> bool:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorized += 1
            return False
        return True

    async def _reload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "UNAUTHORIZED"}, status=401)
        listener = request.match_info["id"]
        body = await request.json() if request.can_read_body else {}
        self.reloads.append({"listener": listener, **body})
        if listener in self.refuse:
            return web.json_response({"code": "INVALID_CERTIFICATE", "message": "key does not match"}, status=422)
        expected = body.get("fingerprint")
        deadline = asyncio.get_running_loop().time() + float(body.get("timeout", 0))
        while expected and self.files.get(listener) != expected:
            if asyncio.get_running_loop().time() >= deadline:
                return web.json_response({"code": "TIMEOUT", "message": "files did not carry it",
                                          "fingerprint": self.served.get(listener)}, status=409)
            await asyncio.sleep(0.02)
        self.served[listener] = self.files.get(listener, "")
        return web.json_response({"reloaded": True, "fingerprint": self.served[listener]})

    async def _certificate(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "UNAUTHORIZED"}, status=401)
        return web.json_response({"fingerprint_sha256": self.served.get(request.match_info["id"])})

    async def _update(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "UNAUTHORIZED"}, status=401)
        self.updates.append((request.match_info["id"], await request.json()))
        return web.json_response({"id": request.match_info["id"]})

    async def start(self) -> "FakeBrokerPod":
        app = web.Application()
        app.router.add_post("/api/v5/listeners/{id}/reload", self._reload)
        app.router.add_get("/api/v5/listeners/{id}/certificate", self._certificate)
        app.router.add_put("/api/v5/listeners/{id}", self._update)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.ip, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def pod_object(self, namespace: str, broker: str) -> dict:
        """The Pod as the API would show it: Running, with this server's address as podIP and admin port."""
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": namespace, "uid": f"uid-{self.name}",
                         "resourceVersion": "1",
                         "labels": {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/instance": broker}},
            "spec": {"containers": [{"name": "broker", "ports": [{"name": "admin", "containerPort": self.port}]}]},
            "status": {"phase": "Running", "podIP": self.ip},
        }
