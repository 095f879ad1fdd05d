"""Admin API handlers: the contract in ``docs/architecture.md`` ("Admin API contract").

Handlers read the running ``BrokerApp``: its listeners (``status()``, ``describe()``; TLS ones also
``reload()``, ``update_ssl_options()``, ``tls_status()``) and its broker (``clients()``). Everything that leaves
here passes through ``scrub()``: key material and passwords never do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config.errors import ConfigError
from ..config.loader import bind_ssl_options
from . import listing
from .site import metrics_text

if TYPE_CHECKING:
    from ..app import BrokerApp

APP_KEY = web.AppKey("broker_app", object)
MAX_RELOAD_WAIT = 300.0
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_SECRET_KEYS = {"password", "key_pem", "private_key", "secret", "secrets", "psk", "psk_secret", "token"}
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def scrub(value: Any) -> Any:
    """JSON-ready copy of ``value`` with secrets masked (passwords) or dropped (key bytes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if str(key).lower() in _SECRET_KEYS:
                out[key] = "******" if item else ""
            else:
                out[key] = scrub(item)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(item) for item in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None  # raw bytes are certificate/key material at best: never shown
    if isinstance(value, str) and _PEM_PRIVATE_KEY.search(value):
        return "<redacted>"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(scrub(data), status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _json({"code": code, "message": message, **extra}, status=status)


def _app(request: web.Request) -> "BrokerApp":
    return request.app[APP_KEY]  # type: ignore[return-value]


def _listener(request: web.Request):
    listener_id = request.match_info["id"]
    app = _app(request)
    listener = app.listeners.get(listener_id)
    if listener is None:
        known = {view["id"] for view in app.listener_views()}
        if listener_id in known:
            raise web.HTTPConflict(text=json.dumps({"code": "NOT_RUNNING",
                                                    "message": f"listener {listener_id} is disabled"}),
                                   content_type="application/json")
        raise web.HTTPNotFound(text=json.dumps({"code": "NOT_FOUND",
                                                "message": f"no listener {listener_id!r}"}),
                               content_type="application/json")
    return listener


async def _body(request: web.Request, required: bool) -> dict[str, Any]:
    if not request.can_read_body:
        if required:
            raise web.HTTPBadRequest(text=json.dumps({"code": "BAD_REQUEST", "message": "a JSON body is required"}),
                                     content_type="application/json")
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=json.dumps({"code": "BAD_REQUEST", "message": "the body is not JSON"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"code": "BAD_REQUEST", "message": "the body must be an object"}),
                                 content_type="application/json")
    return body


def _field(result: Any, name: str, default: Any = None) -> Any:
    if isinstance(result, dict):
        return result.get(name, default)
    return getattr(result, name, default)


def certificate_view(tls_status: dict[str, Any]) -> dict[str, Any]:
    """The served certificate as the contract names it, from a TLS runtime's status."""
    certificate = tls_status.get("certificate") or {}
    if dataclasses.is_dataclass(certificate) and not isinstance(certificate, type):
        certificate = dataclasses.asdict(certificate)
    elif not isinstance(certificate, dict):
        certificate = getattr(certificate, "as_dict", lambda: {})()
    view = {name: certificate.get(name, tls_status.get(name))
            for name in ("subject", "sans", "issuer", "not_before", "not_after", "fingerprint_sha256", "serial")}
    for name in ("loaded_at", "last_error", "last_reload_at"):
        view[name] = tls_status.get(name, certificate.get(name))
    # A new cacertfile held back by client_ca_guard (sha256, would_fail, issuers, message, at), else None.
    view["client_ca_held"] = tls_status.get("client_ca_held")
    return view


def _client_view(client: Any) -> Any:
    if isinstance(client, dict) or (dataclasses.is_dataclass(client) and not isinstance(client, type)):
        return client
    for method in ("info", "as_dict", "to_dict"):
        if callable(getattr(client, method, None)):
            return getattr(client, method)()
    return {k: v for k, v in vars(client).items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------------------------
# Handlers


async def list_listeners(request: web.Request) -> web.Response:
    return _json(_app(request).listener_views())


async def show_listener(request: web.Request) -> web.Response:
    return _json(_listener(request).describe())


async def update_listener(request: web.Request) -> web.Response:
    listener = _listener(request)
    body = await _body(request, required=True)
    if not hasattr(listener, "update_ssl_options"):
        return _error(400, "BAD_REQUEST", f"listener {listener.id} has no ssl_options to update")
    extra = sorted(set(body) - {"ssl_options", "id", "type", "name"})
    if extra or "ssl_options" not in body:
        return _error(400, "BAD_REQUEST", "only ssl_options can be changed at run time"
                      + (f" (not {', '.join(extra)})" if extra else ""))
    changes = body["ssl_options"]
    if isinstance(changes, dict) and changes.get("password") == "******":
        changes = {k: v for k, v in changes.items() if k != "password"}  # the masked value read back: unchanged
    prefix = f"listeners.{listener.type}.{listener.name}.ssl_options"
    try:
        options = bind_ssl_options(changes, listener.config.ssl_options, prefix, source="<request>")
        await listener.update_ssl_options(options)
    except ConfigError as exc:
        return _error(400, "BAD_REQUEST", str(exc), errors=[
            {"field": _under(issue.key, prefix), "message": issue.message} for issue in exc.issues])
    except ValueError as exc:  # the TLS layer refused the material or options; nothing was applied
        problems = getattr(exc, "problems", ())
        return _error(400, "BAD_REQUEST", str(exc), errors=[
            {"field": problem.field, "message": problem.message} for problem in problems
        ] or [{"field": "", "message": str(exc)}])
    return _json(listener.describe())


def _under(key: str, prefix: str) -> str:
    """``key``'s part under ``ssl_options`` ("depth", "ocsp.responder_url"); "" for the block itself."""
    return key[len(prefix) + 1:] if key.startswith(prefix + ".") else ""


async def reload_listener(request: web.Request) -> web.Response:
    listener = _listener(request)
    if not hasattr(listener, "reload"):
        return _error(400, "BAD_REQUEST", f"listener {listener.id} has no certificates to reload")
    body = await _body(request, required=False)
    fingerprint = body.get("fingerprint")
    if fingerprint is not None:
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint.replace(":", "").lower()):
            return _error(400, "BAD_REQUEST", "fingerprint must be the SHA-256 of the certificate: 64 hex digits")
        fingerprint = fingerprint.replace(":", "").lower()
    client_ca = body.get("client_ca_sha256")
    if client_ca is not None and (not isinstance(client_ca, str) or not _FINGERPRINT.fullmatch(client_ca.lower())):
        return _error(400, "BAD_REQUEST", "client_ca_sha256 must be the SHA-256 of the CA bundle: 64 hex digits")
    timeout = body.get("timeout", 30.0 if fingerprint else 0.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= MAX_RELOAD_WAIT:
        return _error(400, "BAD_REQUEST", f"timeout must be a number of seconds in 0..{MAX_RELOAD_WAIT:g}")
    approval = {"client_ca_sha256": client_ca.lower()} if client_ca else {}
    result = await listener.reload(expected_fingerprint=fingerprint, timeout=float(timeout), **approval)
    served = _field(result, "fingerprint")
    if _field(result, "client_ca_held"):
        return _error(409, "CLIENT_CA_HELD", str(_field(result, "error")), fingerprint=served)
    if _field(result, "timed_out"):
        return _error(409, "FINGERPRINT_NOT_SEEN", str(_field(result, "error") or
                      f"the files did not carry certificate {fingerprint} within {timeout:g}s"), fingerprint=served)
    error = _field(result, "error")
    if error:  # invalid material: the old certificate keeps serving
        return _error(422, "INVALID_CERTIFICATE", str(error), fingerprint=served)
    return _json({"reloaded": bool(_field(result, "reloaded", False)), "fingerprint": served})


async def listener_certificate(request: web.Request) -> web.Response:
    listener = _listener(request)
    if not hasattr(listener, "tls_status"):
        return _error(400, "BAD_REQUEST", f"listener {listener.id} does not serve a certificate")
    return _json(certificate_view(listener.tls_status()))


async def client_ca_check(request: web.Request) -> web.Response:
    """How many connected clients of the listener would no longer verify against a candidate client-CA bundle
    (``{"ca_pem": "..."}``), by the issuer of their certificates (``tls/client_ca_check.py``). Read-only."""
    listener = _listener(request)
    runtime = getattr(listener, "runtime", None)
    if runtime is None:
        return _error(400, "BAD_REQUEST", f"listener {listener.id} does not verify client certificates")
    body = await _body(request, required=True)
    candidate = body.get("ca_pem")
    if not isinstance(candidate, str) or not candidate.strip():
        return _error(400, "BAD_REQUEST", "ca_pem must be the candidate bundle's PEM text")
    from ..tls import client_ca_check  # the TLS layer is optional for this module

    generation = runtime.current_generation
    broker = _app(request).broker
    channels = [*broker.channels.values(), *broker.guests] if broker is not None else []
    clients = client_ca_check.connected_certificates(channels, listener.id)
    try:
        report = await asyncio.to_thread(client_ca_check.check, listener.id, candidate.encode(),
                                         list(generation.material.ca_certs), clients,
                                         partial_chain=generation.policy.partial_chain,
                                         depth=generation.policy.depth)
    except client_ca_check.CandidateError as exc:
        return _error(400, "BAD_REQUEST", str(exc))
    return _json(report.as_dict())


async def list_clients(request: web.Request) -> web.Response:
    """One page of the connected clients, filtered the EMQX way (``listing.page_of_clients``)."""
    broker = _app(request).broker
    try:
        page = await listing.page_of_clients(broker.channels if broker is not None else {}, request.query)
    except listing.QueryError as exc:
        return _error(400, "BAD_REQUEST", str(exc))
    return _json({"data": [_client_view(client) for client in listing.views(page.rows)], "meta": page.meta()})


async def list_subscriptions(request: web.Request) -> web.Response:
    """One page of the subscriptions of every session, filtered the EMQX way (``listing.page_of_subscriptions``)."""
    broker = _app(request).broker
    try:
        page = await listing.page_of_subscriptions(broker.sessions if broker is not None else {}, request.query)
    except listing.QueryError as exc:
        return _error(400, "BAD_REQUEST", str(exc))
    return _json({"data": listing.subscription_views(page.rows), "meta": page.meta()})


async def list_retained(request: web.Request) -> web.Response:
    """One page of the retained messages (EMQX's retainer API), all or those matching ``topic``."""
    broker = _app(request).broker
    if broker is None:
        return _json({"data": [], "meta": listing.Page([], 1, listing.DEFAULT_LIMIT, 0).meta()})
    now = broker.loop.time()
    try:
        page = await listing.page_of_retained(broker.retained, request.query, now)
    except listing.QueryError as exc:
        return _error(400, "BAD_REQUEST", str(exc))
    return _json({"data": listing.retained_views(page.rows, now), "meta": page.meta()})


async def healthz(request: web.Request) -> web.Response:
    tls = _tls_backends(request)
    extra = {"tls": tls} if tls is not None else {}
    cluster = _cluster_status(request)
    if cluster is None:
        return _json({"status": "ok", **extra})
    # A node cut off from the cluster backplane is alive (a restart would not help) but says it is degraded;
    # /readyz takes it out of the Service meanwhile.
    healthy = cluster["backplane"]["connected"]
    return _json({"status": "ok" if healthy else "degraded", "cluster": cluster, **extra})


def _tls_backends(request: web.Request) -> dict | None:
    """The TLS backend of each running ssl/wss listener and the path each TLS compatibility component runs
    (docs/tls.md, "Backends and their fallbacks"); None without TLS listeners."""
    backends = {}
    for listener in _app(request).listeners.values():
        status = listener.tls_status() if hasattr(listener, "tls_status") else {}
        if status.get("backend"):
            backends[listener.id] = status["backend"]
    if not backends:
        return None
    from ..tls.compat import status as compat_status

    # Unauthenticated: which path, not the details (library versions); those are in the log and in the
    # listener's own status (/api/v5/listeners/{id}, "tls").
    compat = {name: {"path": o["path"], "fallback": o["fallback"]} for name, o in compat_status().items()}
    return {"listeners": backends, "compat": compat}


def _cluster_status(request: web.Request) -> dict | None:
    broker = _app(request).broker
    status = getattr(broker, "cluster_status", None)
    return status() if status is not None else None


async def readyz(request: web.Request) -> web.Response:
    app = _app(request)
    down = [listener.id for listener in app.listeners.values() if not listener.running]
    cluster = _cluster_status(request)
    backplane_down = cluster is not None and not cluster["backplane"]["connected"]
    if app.ready and not down and not backplane_down:
        return _json({"status": "ready"} if cluster is None else {"status": "ready", "cluster": cluster})
    body = {"status": "not ready", "listeners_down": down, "stopping": app.stopping}
    # Why, where a listener knows: a TLS listener whose certificate files are refused gives the reason code of
    # tls/validation.py (unauthenticated: the code only; the message is in the listener's status and the log).
    reasons = {listener.id: reason for listener in app.listeners.values()
               if not listener.running and (reason := getattr(listener, "down_reason", None))}
    if reasons:
        body["reasons"] = reasons
    if cluster is not None:
        body["cluster"] = cluster
    return _json(body, status=503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v5/listeners", list_listeners)
    app.router.add_get("/api/v5/listeners/{id}", show_listener)
    app.router.add_put("/api/v5/listeners/{id}", update_listener)
    app.router.add_post("/api/v5/listeners/{id}/reload", reload_listener)
    app.router.add_get("/api/v5/listeners/{id}/certificate", listener_certificate)
    app.router.add_post("/api/v5/listeners/{id}/client_ca_check", client_ca_check)
    app.router.add_get("/api/v5/clients", list_clients)
    app.router.add_get("/api/v5/subscriptions", list_subscriptions)
    app.router.add_get("/api/v5/mqtt/retainer/messages", list_retained)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
