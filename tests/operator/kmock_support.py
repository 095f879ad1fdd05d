"""Test support. A broker pod's admin API played by a real aiohttp server on a loopback address (127.0.0.x, ephemeral port).

It speaks the contract in docs/architecture.md: bearer token, ``POST /api/v5/listeners/{id}/reload`` with an
expected fingerprint (waits until its "files" carry it, else 409; 422 for material it refuses),
``GET .../certificate``, ``PUT /api/v5/listeners/{id}`` and ``POST .../client_ca_check`` (judged by issuer name:
a connected client stays if the candidate bundle holds a certificate whose subject is its issuer). The test plays
the kubelet by setting ``files`` and the connected clients by setting ``clients``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field

import kmock as kmock_lib
from aiohttp import web
from cryptography import x509


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
    refuse_updates: int = 0  # how many of the next PUTs answer 400
    reloads: list[dict] = field(default_factory=list)
    updates: list[tuple[str, dict]] = field(default_factory=list)
    unauthorized: int = 0
    # listener id -> the issuer (RFC 4514 subject) of each connected client's certificate
    clients: dict[str, list[str]] = field(default_factory=dict)
    ca_checks: list[dict] = field(default_factory=list)  # the client-CA checks asked: listener, candidate digest
    # listener id -> what the pod's guard holds back (client_ca_held in the certificate view), if anything
    ca_held: dict[str, dict] = field(default_factory=dict)
    # what /healthz reports under "cluster" (None: a standalone broker)
    cluster: dict | None = None
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
        listener = request.match_info["id"]
        return web.json_response({"fingerprint_sha256": self.served.get(listener),
                                  "client_ca_held": self.ca_held.get(listener)})

    async def _client_ca_check(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "UNAUTHORIZED"}, status=401)
        listener = request.match_info["id"]
        pem = (await request.json())["ca_pem"].encode()
        subjects = {c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(pem)}
        connected = self.clients.get(listener, [])
        failing = Counter(issuer for issuer in connected if issuer not in subjects)
        digest = hashlib.sha256(pem).hexdigest()
        self.ca_checks.append({"listener": listener, "candidate_sha256": digest})
        return web.json_response({"listener": listener, "candidate_sha256": digest, "connections": len(connected),
                                  "would_fail": sum(failing.values()), "unchecked": 0,
                                  "issuers": [{"issuer": i, "clients": n} for i, n in sorted(failing.items())]})

    async def _update(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "UNAUTHORIZED"}, status=401)
        if self.refuse_updates > 0:
            self.refuse_updates -= 1
            return web.json_response({"code": "BAD_REQUEST", "message": "not now"}, status=400)
        self.updates.append((request.match_info["id"], await request.json()))
        return web.json_response({"id": request.match_info["id"]})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.cluster is None:
            return web.json_response({"status": "ok"})
        connected = self.cluster["backplane"]["connected"]
        return web.json_response({"status": "ok" if connected else "degraded", "cluster": self.cluster})

    async def start(self) -> FakeBrokerPod:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/api/v5/listeners/{id}/reload", self._reload)
        app.router.add_get("/api/v5/listeners/{id}/certificate", self._certificate)
        app.router.add_put("/api/v5/listeners/{id}", self._update)
        app.router.add_post("/api/v5/listeners/{id}/client_ca_check", self._client_ca_check)
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
                         "labels": {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/instance": broker,
                                    "app.kubernetes.io/component": "broker"}},
            "spec": {"containers": [{"name": "broker", "ports": [{"name": "admin", "containerPort": self.port}]}]},
            "status": {"phase": "Running", "podIP": self.ip},
        }


# --- kmock: the emulated Kubernetes API ----------------------------------------------------------------

CORE = {
    "v1/namespaces": ("Namespace", False),
    "v1/events": ("Event", True),
    "v1/secrets": ("Secret", True),
    "v1/configmaps": ("ConfigMap", True),
    "v1/services": ("Service", True),
    "v1/serviceaccounts": ("ServiceAccount", True),
    "v1/pods": ("Pod", True),
    "apps/v1/statefulsets": ("StatefulSet", True),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True),
    "cert-manager.io/v1/certificates": ("Certificate", True),
}


_versions = itertools.count(100)


class VersioningEmulator(kmock_lib.KubernetesEmulator):
    """kmock's emulator plus a resourceVersion that changes on every write.

    kopf tells its own writes' echoes from stale events by resourceVersion; with kmock's constant one, every
    status write looked like an unhandled change and the handlers ran again and again.
    """

    async def _handle(self, request):
        if request.resource is not None and request.name is not None and \
                "apply-patch" in str(request.headers.get("Content-Type", "")):
            return await self._server_side_apply(request)
        if isinstance(request.data, list) and request.action == kmock_lib.action.UPDATE:
            self._check_patch_tests(request)
        if request.resource is not None and request.action in (kmock_lib.action.CREATE, kmock_lib.action.UPDATE):
            version = str(next(_versions))
            if isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = version
            elif isinstance(request.data, list):  # a JSON patch
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        return await super()._handle(request)

    async def _server_side_apply(self, request):
        """A coarse server-side apply: the applied body replaces the fields it names (top-level keys besides
        metadata and status; labels, annotations and ownerReferences), and creates the object when it is missing.
        No field managers: there are no conflicts, and fields someone else added under a replaced key go too (the
        real API server's behaviour is covered by tests/realapi)."""
        import copy

        from aiohttp import web

        key = (request.resource, request.namespace, request.name)
        applied = copy.deepcopy(request.data)
        async with self._lock:
            existing = self._objects[key] if key in self._objects and not self._objects[key].deleted else None
            if existing is None:
                obj = applied
                obj["metadata"].setdefault("uid", f"uid-{request.name}-{next(_versions)}")
                event = "ADDED"
            else:
                obj = copy.deepcopy(dict(existing.last.raw))
                for field, value in applied.items():
                    if field not in ("metadata", "status"):
                        obj[field] = value
                for field in ("labels", "annotations", "ownerReferences"):
                    if field in applied.get("metadata", {}):
                        obj["metadata"][field] = applied["metadata"][field]
                if obj == existing.last.raw:  # nothing changes: no new version, no event (as the real API)
                    return web.json_response(obj)
                event = "MODIFIED"
            obj["metadata"]["resourceVersion"] = str(next(_versions))
            if key in self._objects:
                self._objects[key].create(obj)
            else:
                self._objects[key] = obj
            raw = self._objects[key].raw
            await self._buses[request.resource].put({"type": event, "object": raw})
        return web.json_response(raw)

    def _check_patch_tests(self, request) -> None:
        """A JSON patch whose resourceVersion ``test`` fails is a 422, as the real API answers (kmock answers
        500, which kopf retries with the same stale patch instead of waiting for the next event)."""
        from kmock._internal.k8s import KubernetesError

        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return
        version = self._objects[key].raw.get("metadata", {}).get("resourceVersion")
        for op in request.data:
            if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion" and op.get("value") != version:
                raise KubernetesError(status=422, reason="Invalid",
                                      message=f"the object has been modified (resourceVersion {version})")


def declare_resources(kmock) -> None:
    """Discovery for every resource the operator touches (kopf waits for v1/namespaces even when unused)."""
    verbs = {"list", "watch", "get", "create", "patch", "delete"}
    for resource, (kind, namespaced) in CORE.items():
        kmock.resources[resource] = kmock_lib.ResourceInfo(kind=kind, namespaced=namespaced, verbs=verbs)
    kmock.resources["mqtt.wharf.dev/v1alpha1/mqttbrokers"] = kmock_lib.ResourceInfo(
        kind="MQTTBroker", namespaced=True, verbs=verbs, subresources={"status", "scale"}, shortnames={"mqb"})


def parse_path_with_namespaces(original):
    """kmock 0.8 reads ``/api/v1/namespaces[/<name>]`` as "namespace <name> of no resource" (and fails on the
    bare list). kopf lists and watches namespaces when scoped to namespaces; parse those paths as the
    cluster-scoped ``namespaces`` resource."""
    from kmock._internal import parsing

    def parse_path(path: str):
        parts = path.split("?", 1)[0].strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
        return original(path)

    return parse_path
