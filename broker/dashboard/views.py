"""The Dashboard's pages and form handlers, mounted under ``/dashboard`` of the admin API's aiohttp app.

Every page needs a session (``sessions.py``); every POST also needs the session's CSRF token and, when the
browser sends one, an ``Origin`` of this server. Listener updates go through the same path as the admin API's
``PUT /api/v5/listeners/{id}``: ``bind_ssl_options`` then the TLS runtime's ``update_options``, which refuses a
change whole. Uploaded files are checked with the TLS layer's own validation before the listener sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import MultiDictProxy

from ..admin import listing
from ..admin.auth import TokenSource
from ..config.errors import ConfigError
from ..config.loader import bind_ssl_options
from ..config.model import SslOptions
from ..tls import TlsConfigError, validate_options
from ..tls.material import read_snapshot, validate_snapshot
from . import markup as ui
from . import uploads
from .forms import (OPERATOR_OWNED, TLS_VERSIONS, UPLOADS, SslForm, form_field, material_field, parse_ssl_form,
                    place_problems)
from .rates import MessageRates
from .sessions import COOKIE, LOGIN_COOKIE, LOGINS, LoginGate, Session, SessionStore, csrf_ok

if TYPE_CHECKING:
    from ..app import BrokerApp

log = logging.getLogger("wharf.dashboard")
STATIC_DIR = Path(__file__).with_name("static")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _protocol(version: Any) -> str:
    return {3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5.0"}.get(version, str(version or "—"))


def _state(view: dict[str, Any]) -> str:
    if not view.get("enable", True):
        return ui.badge("disabled", "neutral")
    return ui.badge("running", "good") if view.get("running") else ui.badge("stopped", "bad")


def _connections(view: dict[str, Any]) -> str:
    limit = view.get("max_connections")
    return f'{view.get("current_connections", 0)} / {"∞" if limit is None else f"{limit:,}"}'


def _listener_link(listener_id: str) -> str:
    return f'/dashboard/listeners/{quote(listener_id, safe="")}'


class Dashboard:
    def __init__(self, broker_app: BrokerApp) -> None:
        self.broker_app = broker_app
        self.settings = broker_app.config.dashboard
        self.gate = LoginGate(self.settings, TokenSource(self.settings))
        self.sessions = SessionStore(self.settings.session_timeout)
        self.rates = MessageRates()
        self.started = time.time()
        self.managed_by = self.settings.managed_by
        self.owned = OPERATOR_OWNED if self.managed_by else frozenset()
        self._update_lock = asyncio.Lock()

    # -- application ---------------------------------------------------------------------------------------
    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self.authenticated(self.overview))
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.authenticated(self.logout))
        app.router.add_get("/listeners", self.authenticated(self.listeners))
        app.router.add_get("/listeners/{id}", self.authenticated(self.listener))
        app.router.add_post("/listeners/{id}", self.authenticated(self.update_listener))
        app.router.add_get("/certificates", self.authenticated(self.certificates))
        app.router.add_post("/certificates/{id}/reload", self.authenticated(self.reload))
        app.router.add_get("/clients", self.authenticated(self.clients))
        app.router.add_static("/static", STATIC_DIR, append_version=False)
        app.cleanup_ctx.append(self._sampling)
        return app

    async def _sampling(self, _app: web.Application):
        self.rates.start()
        yield
        await self.rates.stop()

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith("/dashboard/static/"):
            response.headers["Cache-Control"] = "no-store"
        if isinstance(response, web.HTTPException) and response.status >= 300:
            raise response
        return response

    def authenticated(self, handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = self.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                if request.method == "GET":
                    raise web.HTTPSeeOther("/dashboard/login")
                raise web.HTTPForbidden(text="your session has ended: log in again")
            if request.method == "POST":
                self._check_origin(request)
                # A multipart body is read once, by the handler; the token travels in a header-free form field.
                form = await self._read_form(request)
                if not csrf_ok(session.csrf, _text(form.get("csrf"))):
                    raise web.HTTPForbidden(text="the form is out of date (CSRF token): reload the page")
                request["form"] = form
            return await handler(request, session)

        return guarded

    @staticmethod
    def _check_origin(request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin != f"{request.scheme}://{request.host}":
            raise web.HTTPForbidden(text="cross-site form posts are refused")

    @staticmethod
    async def _read_form(request: web.Request) -> MultiDictProxy:
        try:
            return await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size, actual_size=request.content_length or 0,
                                                text="the upload is too large (1 MiB at most per form)") from None

    def _page(self, request: web.Request, session: Session, title: str, active: str, body: str,
              status: int = 200) -> web.Response:
        message, session.flash = session.flash, None
        flash = ui.flash(*message) if message else ""
        text = ui.page(title, active, body, node=self.broker_app.config.node.name, user=session.user,
                       csrf=session.csrf, flash=flash, managed_by=self.managed_by)
        return web.Response(text=text, content_type="text/html", status=status)

    @staticmethod
    def _redirect(session: Session, location: str, message: str = "", tone: str = "good") -> web.HTTPSeeOther:
        if message:
            session.flash = (message, tone)
        return web.HTTPSeeOther(location)

    # -- login ---------------------------------------------------------------------------------------------
    def _login_methods(self) -> str:
        methods = []
        if self.gate.token_login:
            methods.append("the admin token")
        if self.gate.password_login:
            methods.append(f"the dashboard password of {self.settings.default_username!r}")
        if not methods:
            return ("No login is configured: set dashboard.token (or WHARF_DASHBOARD_TOKEN) or "
                    "dashboard.default_password / default_password_hash.")
        return "Log in with " + " or ".join(methods) + "."

    def _login_response(self, error: str = "", status: int = 200) -> web.Response:
        token = secrets.token_urlsafe(24)
        response = web.Response(text=ui.login_page(token, error, self._login_methods()), content_type="text/html",
                                status=status)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", path="/dashboard")
        return response

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self.sessions.get(request.cookies.get(COOKIE)) is not None:
            raise web.HTTPSeeOther("/dashboard/")
        return self._login_response()

    async def login(self, request: web.Request) -> web.StreamResponse:
        self._check_origin(request)
        form = await request.post()
        if not csrf_ok(request.cookies.get(LOGIN_COOKIE, ""), _text(form.get("csrf"))):
            return self._login_response("The login form expired: try again.", 403)
        address = request.remote or "?"
        username = _text(form.get("username")).strip()
        throttle = self.gate.throttle
        wait = throttle.wait(username, address)
        if wait is not None:
            scope, seconds = wait
            LOGINS.labels(result=f"throttled_{scope}").inc()
            whom = "this user name from this address" if scope == "user" else "this address"
            retry = max(1, math.ceil(seconds))
            response = self._login_response(f"Too many failed logins for {whom}: try again in {retry} s.", 429)
            response.headers["Retry-After"] = str(retry)
            return response
        user = self.gate.check(username, _text(form.get("password")))
        if user is None:
            throttle.failed(username, address)
            LOGINS.labels(result="failed").inc()
            log.warning("dashboard: failed login for %.64r from %s", username, address)
            return self._login_response("Wrong username, password or token.", 401)
        throttle.succeeded(username, address)
        LOGINS.labels(result="ok").inc()
        session = self.sessions.create(user)
        log.info("dashboard: %s logged in from %s", user, address)
        response = web.HTTPSeeOther("/dashboard/")
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/dashboard",
                            secure=request.secure)
        response.del_cookie(LOGIN_COOKIE, path="/dashboard")
        raise response

    async def logout(self, request: web.Request, session: Session) -> web.StreamResponse:
        self.sessions.drop(session.id)
        response = web.HTTPSeeOther("/dashboard/login")
        response.del_cookie(COOKIE, path="/dashboard")
        raise response

    # -- overview ------------------------------------------------------------------------------------------
    async def overview(self, request: web.Request, session: Session) -> web.Response:
        app = self.broker_app
        views = app.listener_views()
        rates = self.rates.per_second()
        totals = self.rates.totals()
        connections = sum(view.get("current_connections", 0) for view in views)
        running = sum(1 for view in views if view.get("running"))
        cards = [
            ("Node", ui.h(app.config.node.name), "ready" if app.ready else "starting"),
            ("Uptime", ui.h(ui.duration_text(time.time() - self.started)), f"since {ui.when(self.started)}"),
            ("Connections", f"{connections:,}", f"{running} of {len(views)} listeners running"),
            ("Messages in", f"{rates['received']:,.1f}/s", f"{int(totals['received']):,} received"),
            ("Messages out", f"{rates['sent']:,.1f}/s", f"{int(totals['sent']):,} sent"),
        ]
        card_html = "".join(f'<div class="card stat" data-stat="{ui.h(title.lower())}"><div class="stat-label">'
                            f'{ui.h(title)}</div><div class="stat-value">{value}</div>'
                            f'<div class="stat-note">{ui.h(note)}</div></div>' for title, value, note in cards)
        rows = [[f'<a href="{_listener_link(v["id"])}">{ui.h(v["id"])}</a>', ui.h(v["type"]).upper(),
                 f'<code>{ui.h(v["bind"])}</code>', _state(v), _connections(v)] for v in views]
        body = (f'<section class="stats" data-refresh="5">{card_html}</section>'
                f'<section class="card"><h2>Listeners</h2>'
                + ui.table(("Listener", "Type", "Bind", "State", "Connections / max"), rows, "No listeners.",
                           "overview-listeners") + "</section>")
        return self._page(request, session, "Overview", "overview", body)

    # -- listeners -----------------------------------------------------------------------------------------
    def _tls_status(self, listener_id: str) -> dict[str, Any]:
        listener = self.broker_app.listeners.get(listener_id)
        return listener.tls_status() if listener is not None and hasattr(listener, "tls_status") else {}

    async def listeners(self, request: web.Request, session: Session) -> web.Response:
        rows = []
        for view in self.broker_app.listener_views():
            tls = self._tls_status(view["id"]) if view["type"] in ("ssl", "wss") else {}
            rows.append([
                f'<a href="{_listener_link(view["id"])}">{ui.h(view["id"])}</a>', ui.h(view["type"]).upper(),
                f'<code>{ui.h(view["bind"])}</code>', _state(view), _connections(view),
                ui.subject(tls.get("subject")) if tls else '<span class="muted">—</span>',
                ui.expiry(tls.get("not_after")) if tls else '<span class="muted">—</span>',
                ui.fingerprint(tls.get("fingerprint_sha256")) if tls else '<span class="muted">—</span>',
            ])
        body = ('<section class="card">' + ui.table(
            ("Listener", "Type", "Bind", "State", "Connections / max", "Certificate subject", "Expires",
             "SHA-256 fingerprint"), rows, "No listeners.", "listeners") + "</section>")
        return self._page(request, session, "Listeners", "listeners", body)

    def _running_listener(self, request: web.Request):
        listener_id = request.match_info["id"]
        listener = self.broker_app.listeners.get(listener_id)
        if listener is None:
            raise web.HTTPNotFound(text=f"no running listener {listener_id!r}")
        return listener

    async def listener(self, request: web.Request, session: Session) -> web.Response:
        listener = self._running_listener(request)
        return self._listener_page(request, session, listener)

    def _listener_page(self, request: web.Request, session: Session, listener: Any, form: SslForm | None = None,
                       posted: MultiDictProxy | None = None, status: int = 200) -> web.Response:
        view = listener.status()
        facts = [("Type", ui.h(view["type"]).upper()), ("Bind", f'<code>{ui.h(view["bind"])}</code>'),
                 ("State", _state(view)), ("Connections / max", _connections(view))]
        options = dataclasses.asdict(listener.config)
        options.pop("ssl_options", None)
        for key in ("mountpoint", "max_conn_rate", "proxy_protocol"):
            if options.get(key) not in (None, "", False):
                facts.append((key.replace("_", " ").capitalize(), ui.h(options[key])))
        body = f'<section class="card"><h2>{ui.h(listener.id)}</h2>{ui.definition_list(facts)}</section>'
        if hasattr(listener, "tls_status"):
            tls = listener.tls_status()
            body = (f'<div class="columns">{body}<section class="card"><h2>Served certificate</h2>'
                    f'{_certificate_facts(tls)}</section></div>')
            body += self._ssl_form(listener, session.csrf, form, posted)
        back = '<p><a href="/dashboard/listeners">← All listeners</a></p>'
        return self._page(request, session, f"Listener {listener.id}", "listeners", back + body, status)

    def _ssl_form(self, listener: Any, csrf: str, form: SslForm | None, posted: MultiDictProxy | None) -> str:
        """EMQX's SSL listener form, in its order, with the current (or just posted) values."""
        current: SslOptions = listener.config.ssl_options
        errors = form.errors if form else {}
        psk = self.broker_app.config.psk_authentication.enable

        # After a refused post the form shows what was posted, except for fields it did not read (owned ones).
        def value(name: str, default: str) -> str:
            if posted is not None and name in posted and name not in self.owned:
                return _text(posted.get(name))
            return default

        def checked(name: str, default: bool) -> bool:
            if posted is None or name in self.owned:
                return default
            return _text(posted.get(name)) == "on"

        def field(name: str, label: str, control: str, help_text: str = "") -> str:
            owned = name in self.owned
            note = (f'<div class="owned">Owned by MQTTBroker {ui.h(self.managed_by)}</div>' if owned else "")
            error = errors.get(name)
            error_html = f'<div class="field-error" id="error-{name}" role="alert">{ui.h(error)}</div>' if error else ""
            help_html = f'<div class="help">{help_text}</div>' if help_text else ""
            return (f'<div class="field{" has-error" if error else ""}" id="field-{name}"><label class="label" '
                    f'for="{name}">{ui.h(label)}</label><div class="control">{control}{help_html}{note}'
                    f'{error_html}</div></div>')

        def disabled(name: str) -> str:
            return " disabled" if name in self.owned else ""

        def toggle(name: str, on: bool) -> str:
            return (f'<label class="switch"><input type="checkbox" id="{name}" name="{name}"'
                    f'{" checked" if on else ""}{disabled(name)}><span class="slider"></span></label>')

        def upload(name: str, path: str, summary: str) -> str:
            current_html = (f'<div class="current-file"><code>{ui.h(Path(path).name)}</code>'
                            f'<span class="muted" title="{ui.h(path)}"> {ui.h(summary)}</span></div>' if path
                            else '<div class="current-file muted">none</div>')
            return (current_html + f'<input type="file" id="{name}" name="{name}" accept=".pem,.crt,.key,.cer,'
                    f'text/plain"{disabled(name)}>')

        tls = listener.tls_status()
        verify_on = checked("verify", current.verify == "verify_peer")
        versions = (posted.getall("versions", []) if posted is not None and "versions" not in self.owned
                    else current.versions)
        version_boxes = "".join(
            f'<label class="check"><input type="checkbox" name="versions" value="{v}"'
            f'{" checked" if v in versions else ""}{disabled("versions")}> {v.replace("tlsv", "TLS ")}</label>'
            for v in TLS_VERSIONS)
        password_state = ("set (type to replace)" if current.password else
                          "from password_file" if current.password_file else "none")
        fields = [
            field("verify", "TLS Verify", toggle("verify", verify_on),
                  "Ask clients for a certificate and verify it against the CA certificate."),
            field("certfile", "TLS Cert", upload("certfile", current.certfile, tls.get("subject") or ""),
                  "PEM, the full chain allowed (leaf first). To reset it, choose a new file and press Update."),
            field("keyfile", "TLS Key", upload("keyfile", current.keyfile, "private key (never shown)"),
                  "PEM private key of the certificate; it must match the certificate."),
            field("cacertfile", "CA Cert", upload("cacertfile", current.cacertfile, "client CA bundle"),
                  "The CAs that issue client certificates."),
            field("versions", "SSL Versions", f'<div class="checks">{version_boxes}</div>',
                  "TLS 1.0 and 1.1 are unsafe; PSK needs TLS 1.2 or below." if psk else
                  "TLS 1.0 and 1.1 are unsafe and enabled only when ticked."),
            field("fail_if_no_peer_cert", "Fail If No Peer Cert",
                  toggle("fail_if_no_peer_cert", checked("fail_if_no_peer_cert", current.fail_if_no_peer_cert)),
                  "Only with TLS Verify on: refuse clients that send no certificate."),
            field("depth", "Intermediate Certificate Depth",
                  f'<input type="number" id="depth" name="depth" min="0" max="100" '
                  f'value="{ui.h(value("depth", str(current.depth)))}"{disabled("depth")}>',
                  "Maximum number of intermediate CAs in a client's chain (default 10)."),
            field("password", "Key Password",
                  f'<input type="password" id="password" name="password" autocomplete="new-password" '
                  f'placeholder="{ui.h(password_state)}"{disabled("password")}>'
                  f'<label class="check small"><input type="checkbox" name="clear_password"{disabled("password")}>'
                  " remove the password</label>", "For an encrypted private key. Never shown."),
            field("enable_ocsp_stapling", "Enable OCSP Stapling",
                  toggle("enable_ocsp_stapling", checked("enable_ocsp_stapling", current.ocsp.enable_ocsp_stapling))),
            field("ocsp_responder_url", "OCSP Responder URL",
                  f'<input type="url" id="ocsp_responder_url" name="ocsp_responder_url" '
                  f'value="{ui.h(value("ocsp_responder_url", current.ocsp.responder_url))}"'
                  f'{disabled("ocsp_responder_url")}>'),
            field("ocsp_issuer_pem", "OCSP Issuer Certificate",
                  upload("ocsp_issuer_pem", current.ocsp.issuer_pem, "issuer of the server certificate")),
            field("ocsp_refresh_interval", "OCSP Refresh Interval",
                  f'<input id="ocsp_refresh_interval" name="ocsp_refresh_interval" '
                  f'value="{ui.h(value("ocsp_refresh_interval", _seconds(current.ocsp.refresh_interval)))}"'
                  f'{disabled("ocsp_refresh_interval")}>'),
            field("enable_crl_check", "Enable CRL Check",
                  toggle("enable_crl_check", checked("enable_crl_check", current.enable_crl_check)),
                  "Check client certificates against CRLs (distribution points and the CRL file)."),
            field("crlfile", "CRL File", upload("crlfile", current.crlfile, "local CRLs")),
            field("ciphers", "Ciphers",
                  f'<textarea id="ciphers" name="ciphers" rows="3" placeholder="OpenSSL defaults"'
                  f'{disabled("ciphers")}>{ui.h(value("ciphers", ", ".join(current.ciphers)))}</textarea>',
                  "OpenSSL names, comma separated; TLS_… names are TLS 1.3 suites. Empty: OpenSSL's defaults."),
            field("reload_interval", "Certificate Reload Interval",
                  f'<input id="reload_interval" name="reload_interval" '
                  f'value="{ui.h(value("reload_interval", _seconds(current.reload_interval)))}"'
                  f'{disabled("reload_interval")}>',
                  "How often the files are re-checked for changes, e.g. 120s or 5m."),
        ]
        general = errors.get("_form")
        general_html = (f'<div class="flash flash-bad" id="error-_form" role="alert">{ui.h(general)}</div>'
                        if general else "")
        if form and form.errors and not general:
            general_html = ('<div class="flash flash-bad" id="error-summary" role="alert">Nothing was changed: '
                            "fix the fields marked below.</div>")
        actions = ("" if self.owned >= OPERATOR_OWNED else
                   '<div class="actions"><button class="primary" type="submit" id="update">Update</button>'
                   f'<a class="button" href="{_listener_link(listener.id)}">Cancel</a></div>')
        return (f'<section class="card"><h2>SSL options</h2>{general_html}'
                f'<form method="post" enctype="multipart/form-data" class="ssl-form" id="ssl-form">'
                f'<input type="hidden" name="csrf" value="{ui.h(csrf)}">{"".join(fields)}{actions}</form></section>')

    async def update_listener(self, request: web.Request, session: Session) -> web.StreamResponse:
        listener = self._running_listener(request)
        if not hasattr(listener, "update_ssl_options"):
            raise web.HTTPBadRequest(text=f"listener {listener.id} has no ssl_options")
        posted: MultiDictProxy = request["form"]
        fields: dict[str, list[str]] = {}
        files: dict[str, bytes] = {}
        for name, item in posted.items():
            if isinstance(item, web.FileField):
                data = item.file.read()
                if data:
                    files[name] = data
            else:
                fields.setdefault(name, []).append(item)
        current: SslOptions = listener.config.ssl_options
        form = parse_ssl_form(fields, files, current, self.broker_app.config.psk_authentication.enable, self.owned)
        if not form.errors:
            async with self._update_lock:
                await self._apply(listener, form)
        if form.errors:
            log.info("dashboard: update of %s refused: %s", listener.id, form.errors)
            return self._listener_page(request, session, listener, form, posted, status=400)
        changed = ", ".join(sorted(form.uploads)) or "options"
        raise self._redirect(session, _listener_link(listener.id),
                             f"Updated {listener.id}: now serving {listener.tls_status().get('fingerprint_sha256', '')[:16]}… "
                             f"({changed} applied without restart).")

    async def _apply(self, listener: Any, form: SslForm) -> None:
        """Validate uploads and options, then apply them at once; on any error fill ``form.errors``."""
        current: SslOptions = listener.config.ssl_options
        try:
            stored = await asyncio.to_thread(uploads.store, self.settings.upload_dir, listener.id, form.uploads)
        except OSError as exc:
            form.errors["_form"] = f"cannot write the uploaded files to {self.settings.upload_dir}: {exc}"
            return
        changes = dict(form.changes)
        for name, path in stored.paths.items():
            key = UPLOADS[name][0]
            if key == "ocsp.issuer_pem":
                changes["ocsp"] = {**changes.get("ocsp", {}), "issuer_pem": path}
            else:
                changes[key] = path
        try:
            options = bind_ssl_options(changes, current, f"listeners.{listener.type}.{listener.name}.ssl_options",
                                       source="dashboard")
            policy = validate_options(options, self.broker_app.config.psk_authentication)
            # The same checks a reload makes (key matches certificate, validity, chain), before anything changes.
            await asyncio.to_thread(lambda: validate_snapshot(policy, read_snapshot(policy)))
            await listener.update_ssl_options(options)
        except ConfigError as exc:
            prefix = f"listeners.{listener.type}.{listener.name}.ssl_options."
            for issue in exc.issues:
                key = issue.key[len(prefix):] if issue.key.startswith(prefix) else ""
                form.errors.setdefault(form_field(key), issue.message)
        except TlsConfigError as exc:
            if exc.problems:
                place_problems(exc.problems, form.errors)
            else:
                form.errors.setdefault(_upload_field(material_field(str(exc)), form), str(exc))
        except ValueError as exc:
            form.errors.setdefault(_upload_field(material_field(str(exc)), form), str(exc))
        if form.errors:
            stored.discard()
            return
        log.info("dashboard: %s updated (%s)", listener.id, ", ".join(sorted(changes)))
        removed = await asyncio.to_thread(uploads.prune, self.settings.upload_dir, listener.id,
                                          uploads.referenced(options))
        if removed:
            log.info("dashboard: removed %d uploaded file(s) no longer used by %s", len(removed), listener.id)

    # -- certificates --------------------------------------------------------------------------------------
    async def certificates(self, request: web.Request, session: Session) -> web.Response:
        cards = []
        for listener in self.broker_app.tls_listeners():
            tls = listener.tls_status()
            state = (ui.badge("last reload failed", "bad") if tls.get("last_error") else ui.badge("serving", "good"))
            extra = []
            if tls.get("ocsp"):
                extra.append(("OCSP stapling", _ocsp_text(tls["ocsp"])))
            if tls.get("crl"):
                extra.append(("CRL check", _crl_text(tls["crl"])))
            reload_form = (f'<form method="post" action="/dashboard/certificates/{quote(listener.id, safe="")}/reload">'
                           f'<input type="hidden" name="csrf" value="{ui.h(session.csrf)}">'
                           f'<button type="submit" class="primary" id="reload-{ui.h(listener.id.replace(":", "-"))}">'
                           "Reload now</button></form>")
            cards.append(
                f'<section class="card cert-card" data-listener="{ui.h(listener.id)}"><div class="card-head">'
                f'<h2><a href="{_listener_link(listener.id)}">{ui.h(listener.id)}</a> {state}</h2>{reload_form}</div>'
                + _certificate_facts(tls, extra) + "</section>")
        body = "".join(cards) or '<section class="card"><p class="muted">No TLS listeners are running.</p></section>'
        return self._page(request, session, "Certificates", "certificates", body)

    async def reload(self, request: web.Request, session: Session) -> web.StreamResponse:
        listener = self._running_listener(request)
        if not hasattr(listener, "reload"):
            raise web.HTTPBadRequest(text=f"listener {listener.id} has no certificates")
        result = await listener.reload()
        if result.error:
            raise self._redirect(session, "/dashboard/certificates",
                                 f"{listener.id}: reload refused, still serving the previous certificate: "
                                 f"{result.error}", "bad")
        message = (f"{listener.id}: new certificate loaded ({result.fingerprint[:16]}…)." if result.reloaded else
                   f"{listener.id}: the files are unchanged; nothing to reload.")
        raise self._redirect(session, "/dashboard/certificates", message)

    # -- clients -------------------------------------------------------------------------------------------
    async def clients(self, request: web.Request, session: Session) -> web.Response:
        """One page of the connected clients, searchable by client id, user name and address (the admin API's
        ``listing``: only the page's rows are built, whatever the number of clients)."""
        broker = self.broker_app.broker
        channels = broker.channels if broker is not None else {}
        query = {name: request.query.get(name, "").strip() for name in CLIENT_SEARCH + ("page", "limit")}
        status, error = 200, ""
        try:
            found = await listing.page_of_clients(channels, query)
        except listing.QueryError as exc:
            status, error = 400, str(exc)
            found = listing.Page([], 1, listing.DEFAULT_LIMIT, 0)
        clients = listing.views(found.rows)
        rows = [[ui.h(c.get("clientid")), ui.h(c.get("username") or "—"), ui.h(c.get("listener")),
                 f'<code>{ui.h(c.get("peer"))}</code>', ui.h(_protocol(c.get("proto_ver"))),
                 ui.h(c.get("tls_version") or "—"), f'<code>{ui.h(c.get("tls_cipher") or "—")}</code>',
                 ui.h(c.get("peer_cert_subject") or "—"), ui.when(c.get("connected_at"))]
                for c in clients]
        searching = any(query[name] for name in CLIENT_SEARCH)
        heading = (f"{found.count} of {len(channels)} connected match" if searching else f"{found.count} connected")
        body = (f'<section class="card" data-refresh="5"><h2>{ui.h(heading)}</h2>'
                + _client_search(query) + ui.flash(error, "bad")
                + ui.table(("Client ID", "Username", "Listener", "Peer", "Protocol", "TLS", "Cipher",
                            "Client certificate", "Connected at"), rows,
                           "No client matches the search." if searching else "No clients are connected.", "clients")
                + _pager(found, query) + "</section>")
        return self._page(request, session, "Clients", "clients", body, status=status)

CLIENT_SEARCH = ("like_clientid", "like_username", "ip_address")


def _client_search(query: dict[str, str]) -> str:
    """The Clients page's search form (a GET: the search is part of the address, and survives the refresh)."""
    fields = (("like_clientid", "Client ID contains"), ("like_username", "Username contains"),
              ("ip_address", "IP address"))
    inputs = "".join(f'<label>{ui.h(label)}<input name="{name}" id="search-{name}" value="{ui.h(query[name])}" '
                     f'maxlength="{listing.MAX_FILTER_LENGTH}"></label>' for name, label in fields)
    limit = f'<input type="hidden" name="limit" value="{ui.h(query["limit"])}">' if query["limit"] else ""
    return (f'<form class="search" method="get" action="/dashboard/clients" role="search">{inputs}{limit}'
            '<button class="primary" type="submit" id="search">Search</button>'
            '<a class="button" href="/dashboard/clients">Clear</a></form>')


def _pager(found: "listing.Page", query: dict[str, str]) -> str:
    """Rows shown, and links to the previous and next pages with the same search."""
    if not found.count:
        return ""
    first = (found.page - 1) * found.limit + 1
    last = first + len(found.rows) - 1
    pages = -(-found.count // found.limit)
    shown = (f"Rows {first}–{last} of {found.count}" if found.rows else f"Page {found.page} is past the last one")

    def link(page: int, label: str, ident: str) -> str:
        params = {name: value for name, value in query.items() if value and name != "page"}
        params["page"] = str(page)
        return f'<a class="button" id="{ident}" href="/dashboard/clients?{ui.h(urlencode(params))}">{ui.h(label)}</a>'

    links = (link(found.page - 1, "← Previous", "page-prev") if found.page > 1 else "") + (
        link(found.page + 1, "Next →", "page-next") if found.hasnext else "")
    return (f'<nav class="pager" aria-label="pages"><span class="muted" id="page-info">{shown} · page '
            f'{found.page} of {pages}</span>{links}</nav>')


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _upload_field(name: str, form: SslForm) -> str:
    # A key that does not match the uploaded certificate is about the upload the person just made.
    if name == "keyfile" and "keyfile" not in form.uploads and "certfile" in form.uploads:
        return "certfile"
    return name


def _kv(items: list[tuple[str, Any]]) -> str:
    return " ".join(f'<span class="kv"><span class="muted">{ui.h(key)}</span> {value}</span>' for key, value in items)


def _ocsp_text(ocsp: dict[str, Any]) -> str:
    staple = ocsp.get("staple_status")
    tone = "good" if staple == "good" else "bad" if staple else "warn"
    items: list[tuple[str, Any]] = [
        ("staple", ui.badge(staple or "none yet", tone)),
        ("responder", f'<code>{ui.h(ocsp.get("responder_url"))}</code>'),
        ("fetched", ui.when(ocsp.get("fetched_at"))),
        ("next update", ui.when(ocsp.get("next_update"))),
    ]
    if ocsp.get("last_error"):
        items.append(("last error", f'<span class="error-text">{ui.h(ocsp["last_error"])}</span>'))
    return _kv(items)


def _crl_text(crl: dict[str, Any]) -> str:
    items: list[tuple[str, Any]] = [("local crls", ui.h(crl.get("local_crls", 0)))]
    points = crl.get("distribution_points") or {}
    urls = points.get("urls") or {}
    items.append(("distribution points cached", ui.h(len(urls))))
    for url, entry in urls.items():
        items.append((url, f'fetched {ui.h(entry.get("age_s"))} s ago, next update {ui.when(entry.get("next_update"))}'))
    for url, error in (points.get("errors") or {}).items():
        items.append((url, f'<span class="error-text">{ui.h(error)}</span>'))
    return _kv(items)


def _certificate_facts(tls: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> str:
    if not tls:
        return '<p class="muted">Not serving yet.</p>'
    error = tls.get("last_error")
    warnings = tls.get("warnings") or []
    items = [
        ("Subject", ui.h(tls.get("subject"))),
        ("Issuer", ui.h(tls.get("issuer"))),
        ("SANs", ui.h(", ".join(tls.get("sans") or []) or "—")),
        ("Expires", ui.expiry(tls.get("not_after"))),
        ("Valid from", ui.when(tls.get("not_before"))),
        ("Fingerprint", ui.fingerprint(tls.get("fingerprint_sha256"))),
        ("Serial", f'<code>{ui.h(tls.get("serial"))}</code>'),
        ("Loaded at", ui.when(tls.get("loaded_at"))),
        ("Last reload check", ui.when(tls.get("last_reload_at"))),
        ("Reloads", f'{tls.get("reloads_ok", 0)} ok, {tls.get("reloads_failed", 0)} refused'),
        ("Last reload error", f'<span class="error-text">{ui.h(error)}</span>' if error else "none"),
        ("Backend", ui.h(tls.get("backend"))),
    ]
    if warnings:
        items.append(("Warnings", "<br>".join(ui.h(w) for w in warnings)))
    return ui.definition_list(items + (extra or []))


def mount(admin_app: web.Application, broker_app: BrokerApp) -> Dashboard:
    """Serve the Dashboard under ``/dashboard/`` of ``admin_app`` (``/`` and ``/dashboard`` redirect there)."""
    dashboard = Dashboard(broker_app)
    admin_app.add_subapp("/dashboard", dashboard.application())

    async def to_dashboard(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/dashboard/")

    admin_app.router.add_get("/", to_dashboard)
    admin_app.router.add_get("/dashboard", to_dashboard)
    return dashboard
