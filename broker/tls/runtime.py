"""``TlsListenerRuntime``: everything TLS about one ssl/wss listener, for the listener layer to drive.

A *generation* is one validated, built and smoke-tested set of certificate material with its policy. The
runtime serves the current generation to every new connection; ``reload()`` and ``update_options()`` make a
new one off the loop (in a thread) and swap it in with no ``await`` between the base-context update and the
swap. A failure leaves the serving generation alone, is logged once and shows in ``status()`` and metrics.
Open connections keep the context they were made with, so a reload never drops them.

Backends: the stdlib ``ssl`` fast path (a base context whose SNI callback hands out the current material
context), or pyOpenSSL over a memory BIO for listeners with OCSP stapling or PSK (``pyossl_transport.py``).
The backend a listener runs is logged with each generation, shown in ``status()`` and exported as
``wharf_tls_listener_backend{listener, backend} 1``. What either backend takes from outside public APIs (the
OpenSSL shim, the lean ``SSLProtocol``, pyOpenSSL's private bindings) is checked in ``compat/``, each with a plain
path when its check fails; pyOpenSSL is imported only once a listener needs that backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import ssl
import time
from asyncio import sslproto
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..config.model import CrlCache as CrlCacheConfig
from ..config.model import PskAuthentication, SslOptions
from ..metrics import REGISTRY, Registry
from ..tasks import spawn
from . import accepted, compat
from .compat.openssl_shim import OpenSslShim, ShimError
from .compat.pyopenssl import PyOpenSsl
from .context import (build_base_context, build_pyopenssl_context, build_stdlib_context, configure_stdlib,
                      smoke_pyopenssl, smoke_stdlib)
from .crl_cache import CrlDistributionCache
from .errors import TlsConfigError
from .handshake_metrics import TlsMetrics, observed_sslobject_class
from .material import Material, Snapshot, leaf_fingerprint, read_snapshot, snapshot_with, validate_snapshot
from .ocsp_cache import OcspStapler
from .options import TlsPolicy, validate_options
from .peer_checks import PeerChecker, settle
from .psk import parse_psk_file
from .reloader import PeriodicReloader
from .server import TlsServer

if TYPE_CHECKING:
    from OpenSSL import SSL

log = logging.getLogger("wharf.tls")
EXPECTED_FINGERPRINT_POLL = 0.25


@dataclass(frozen=True)
class ReloadResult:
    reloaded: bool
    fingerprint: str | None  # the fingerprint served after the call
    error: str | None = None
    waited: float = 0.0
    # True when ``expected_fingerprint`` did not appear in the files within ``timeout``.
    timed_out: bool = False
    # True when a new cacertfile was held back: connected clients would no longer verify against it
    # (``ssl_options.client_ca_guard``); ``error`` says how many and whose.
    client_ca_held: bool = False


@dataclass(frozen=True, eq=False)
class Generation:
    policy: TlsPolicy
    material: Material
    backend: str  # stdlib | pyopenssl
    stdlib_ctx: ssl.SSLContext | None
    pyossl_ctx: SSL.Context | None
    psk_table: dict[bytes, bytes]
    smoke: str
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    from_last_accepted: bool = False  # the files were refused at start: this is the material kept from before

    @property
    def digest(self) -> str:
        return self.material.snapshot.digest

    @property
    def fingerprint(self) -> str:
        return self.material.info.fingerprint_sha256


def choose_backend(policy: TlsPolicy, shim: OpenSslShim | None, wanted: str = "auto") -> str:
    if wanted == "pyopenssl":
        return wanted
    if wanted == "stdlib":
        if policy.needs_pyopenssl:
            raise TlsConfigError("OCSP stapling and PSK need the pyOpenSSL backend")
        if shim is None and (policy.verify_peer or policy.tls13_suites):
            raise TlsConfigError("the stdlib backend cannot enforce depth/TLS 1.3 suites here (OpenSSL shim "
                                 "unavailable)")
        return wanted
    if policy.needs_pyopenssl:
        return "pyopenssl"
    # Without the shim the stdlib cannot enforce depth or TLS 1.3 suites: pyOpenSSL can.
    if shim is None and (policy.verify_peer or policy.tls13_suites):
        return "pyopenssl"
    return "stdlib"


def _trust_changed(previous: Generation, current: Generation) -> bool:
    old, new = previous.material.snapshot, current.material.snapshot
    return (old.ca_pem, old.crl_pem) != (new.ca_pem, new.crl_pem) or previous.policy != current.policy


class _StdlibGate(asyncio.Protocol):
    """Sits in front of the application protocol until the post-handshake checks passed, then steps aside."""

    __slots__ = ("_runtime", "_app", "_buffered", "_eof", "_lost")

    def __init__(self, runtime: "TlsListenerRuntime", app: asyncio.Protocol) -> None:
        self._runtime = runtime
        self._app = app
        self._buffered: list[bytes] = []
        self._eof = False
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        runtime = self._runtime
        runtime.metrics.handshakes_ok.inc()
        verdict = None
        if runtime.checker.active():
            sslobj = transport.get_extra_info("ssl_object")
            verdict = runtime.checker.check_now(sslobj.getpeercert(binary_form=True), sslobj.session_reused)
            if verdict is not None and not isinstance(verdict, str):
                transport.pause_reading()  # type: ignore[attr-defined]
                spawn(self._finish(transport, verdict))
                return
        self._decide(transport, verdict)

    async def _finish(self, transport, pending) -> None:
        verdict = await settle(pending)
        if self._lost:
            return
        self._decide(transport, verdict)
        if not verdict:
            for chunk in self._buffered:
                self._app.data_received(chunk)
            self._buffered.clear()
            if self._eof and not self._app.eof_received():
                transport.close()
            else:
                transport.resume_reading()

    def _decide(self, transport, verdict: str | None) -> None:
        if verdict:
            self._runtime.metrics.failed(verdict)
            transport.abort()
            return
        self._runtime.track(transport, transport.get_extra_info("ssl_object"))
        transport.set_protocol(self._app)
        self._app.connection_made(transport)

    # Only reached while a check is pending (afterwards the transport talks to the application directly).
    def data_received(self, data: bytes) -> None:
        self._buffered.append(bytes(data))

    def eof_received(self) -> bool:
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True


class TlsListenerRuntime:
    def __init__(self, listener_id: str, options: SslOptions, *, psk: PskAuthentication | None = None,
                 crl_cache: CrlCacheConfig | CrlDistributionCache | None = None,
                 registry: Registry = REGISTRY, backend: str = "auto", accepted_dir: Path | None = None) -> None:
        if backend not in ("auto", "stdlib", "pyopenssl"):
            raise TlsConfigError(f"backend must be auto, stdlib or pyopenssl, not {backend!r}")
        self.listener_id = listener_id
        self._wanted_backend = backend
        self._options = options
        self._psk_config = psk or PskAuthentication()
        self._crl_config = crl_cache or CrlCacheConfig()
        self.metrics = TlsMetrics(listener_id, registry)
        self.checker = PeerChecker(self)
        self.crl_cache: CrlDistributionCache | None = None
        self._shim: OpenSslShim | None = None
        self._registry = registry
        self._sslproto_class: type[sslproto.SSLProtocol] | None = None
        self._generation: Generation | None = None
        self._base_ctx: ssl.SSLContext | None = None
        self._servers: list[TlsServer] = []
        self._lock = asyncio.Lock()
        self._reloader: PeriodicReloader | None = None
        self._ocsp: OcspStapler | None = None
        self._accepted_dir = accepted_dir  # where the last accepted material is kept (accepted.py); None: nowhere
        self._last_error: str | None = None
        self._last_refusal: dict[str, str] | None = None
        self._last_logged_error: str | None = None
        self._last_reload_at: dt.datetime | None = None
        self._reloads_ok = 0
        self._reloads_failed = 0
        self._started = False
        # Open connections with a client certificate, re-checked when CRLs change: transport -> DER.
        self._live: dict[Any, bytes] = {}
        self._prune_at = 64
        # Set by the listener: the client certificates of its connected clients (``client_ca_check``), for
        # ``client_ca_guard``. None: no connection is known, so nothing is held.
        self.client_certificates: Callable[[], list[tuple[bytes, tuple[bytes, ...]]]] | None = None
        self._client_ca_held: dict[str, Any] | None = None
        # The client-CA bundle (SHA-256) a reload named last: loaded whenever the files carry it, also by a later
        # re-check (the operator may name it before the kubelet projects it).
        self._client_ca_approved: str | None = None

    # -- building --------------------------------------------------------------------------------------------
    @property
    def current_generation(self) -> Generation:
        if self._generation is None:
            raise RuntimeError(f"TLS listener {self.listener_id} is not started")
        return self._generation

    @property
    def options(self) -> SslOptions:
        return self._options

    @property
    def backend(self) -> str:
        return self.current_generation.backend

    def _pyopenssl(self, policy: TlsPolicy) -> PyOpenSsl:
        """pyOpenSSL for a listener on that backend, or ``TlsConfigError`` saying what it lacks for this one."""
        loaded = compat.use_pyopenssl(self._registry)
        if loaded is None:
            why = ("OCSP stapling (ocsp.enable_ocsp_stapling)" if policy.ocsp_stapling else
                   "PSK (psk_authentication)" if policy.psk_enabled else
                   "this listener (backend pyopenssl asked for)" if self._wanted_backend == "pyopenssl" else
                   "depth/TLS 1.3 suites (verify_peer, TLS 1.3 ciphers) without the OpenSSL shim")
            raise TlsConfigError(f"{why} needs the pyOpenSSL backend, and pyOpenSSL cannot be imported here: "
                                 f"{compat.pyopenssl_error()}")
        if policy.psk_enabled and loaded.private is None:
            raise TlsConfigError(f"PSK (psk_authentication) needs pyOpenSSL's private bindings, which pyOpenSSL "
                                 f"{loaded.version} lacks ({loaded.detail}); other listeners are not affected. "
                                 "Allow only tlsv1.3 on this listener (no PSK there) or install a pyOpenSSL "
                                 "that has them")
        if policy.ocsp_stapling and not loaded.ocsp_stapling:
            raise TlsConfigError(f"OCSP stapling (ocsp.enable_ocsp_stapling): pyOpenSSL {loaded.version} has no "
                                 "Context.set_ocsp_server_callback")
        return loaded

    def _configure_pyopenssl(self, pyossl: PyOpenSsl, material: Material, psk_enabled: bool,
                             ocsp: bool) -> Callable[[SSL.Context], None]:
        def configure(ctx: SSL.Context) -> None:
            if psk_enabled:
                if pyossl.private is None or not pyossl.private.enable_psk(ctx, b"wharf"):
                    raise TlsConfigError("OpenSSL refused the PSK identity hint")
            if ocsp:
                leaf = material.leaf

                def staple(_connection, _data) -> bytes:
                    stapler = self._ocsp
                    return stapler.staple_for(leaf) if stapler is not None else b""

                ctx.set_ocsp_server_callback(staple)
        return configure

    def _build(self, policy: TlsPolicy, snapshot: Snapshot) -> Generation:
        """Validate, build and smoke-test one generation (runs in a worker thread)."""
        material = validate_snapshot(policy, snapshot)
        backend = choose_backend(policy, self._shim, self._wanted_backend)
        psk_table = parse_psk_file(snapshot.psk_lines, policy.psk_separator) if policy.psk_enabled else {}
        if backend == "stdlib":
            ctx = build_stdlib_context(policy, material, self._shim)
            smoke = smoke_stdlib(ctx, policy)
            return Generation(policy, material, backend, ctx, None, psk_table, smoke)
        pyossl = self._pyopenssl(policy)
        configure = self._configure_pyopenssl(pyossl, material, policy.psk_enabled, policy.ocsp_stapling)
        pctx = build_pyopenssl_context(pyossl, policy, material, configure)
        smoke = smoke_pyopenssl(pyossl, pctx, policy)
        return Generation(policy, material, backend, None, pctx, psk_table, smoke)

    async def _load(self, policy: TlsPolicy) -> Generation:
        snapshot = await asyncio.to_thread(read_snapshot, policy)
        return await asyncio.to_thread(self._build, policy, snapshot)

    def _commit(self, generation: Generation) -> None:
        """Serve ``generation`` to new connections. No awaits: nothing can interleave."""
        previous = self._generation
        if generation.backend == "stdlib":
            if self._base_ctx is None:
                self._base_ctx = build_base_context(generation.policy, self._shim)
                self._base_ctx.sni_callback = self._select_context
                self._base_ctx.sslobject_class = observed_sslobject_class(self.metrics)
            elif previous is None or previous.policy != generation.policy:
                configure_stdlib(self._base_ctx, generation.policy, self._shim)
            if previous is not None and self._shim is not None and _trust_changed(previous, generation):
                # Sessions live in the base context: a resumed session skips verification, so none made under
                # the old CAs/CRLs may be resumed under the new ones.
                try:
                    self._shim.invalidate_sessions(self._base_ctx)
                except ShimError as exc:
                    log.warning("TLS %s: could not drop old TLS sessions: %s", self.listener_id, exc)
        self._generation = generation
        self.metrics.backend_is(generation.backend)
        self.metrics.expiry_child.set(generation.material.info.not_after.timestamp())
        self._last_error = None
        self._last_logged_error = None
        info = generation.material.info
        log.info("TLS %s: serving %s (serial %s, not after %s, sha256 %s; %s backend, smoke %s)",
                 self.listener_id, info.subject, info.serial, info.not_after.isoformat(), info.fingerprint_sha256,
                 generation.backend, generation.smoke)
        for warning in generation.policy.warnings + generation.material.warnings:
            log.warning("TLS %s: %s", self.listener_id, warning)
        if self._ocsp is not None and (previous is None or previous.fingerprint != generation.fingerprint):
            self._ocsp.certificate_changed()
        crls_changed = previous is None or previous.material.snapshot.crl_pem != generation.material.snapshot.crl_pem
        if self._live and crls_changed:
            self.kick_revoked()

    def track(self, transport: Any, sslobj: Any) -> None:
        """Remember an open connection with a client certificate, when CRL checking could revoke it later."""
        generation = self._generation
        if generation is None or not generation.policy.enable_crl_check or sslobj is None:
            return
        der = sslobj.getpeercert(binary_form=True)
        if der is None:
            return
        if len(self._live) >= self._prune_at:
            # Transports are not all weak-referenceable (uvloop's): drop closed ones in amortised sweeps.
            self._live = {t: d for t, d in self._live.items() if not t.is_closing()}
            self._prune_at = max(64, 2 * len(self._live))
        self._live[transport] = der

    def kick_revoked(self) -> int:
        """Close open connections whose client certificate a CRL now revokes; returns how many."""
        kicked = 0
        for transport, der in list(self._live.items()):
            if transport.is_closing():
                del self._live[transport]
            elif self.checker.revoked_now(der):
                del self._live[transport]
                transport.abort()
                self.metrics.failed("revoked_while_connected")
                kicked += 1
        if kicked:
            log.warning("TLS %s: closed %d open connection(s) whose certificate is now revoked", self.listener_id,
                        kicked)
        return kicked

    def _select_context(self, sslobj: ssl.SSLObject, server_name: str | None, base: ssl.SSLContext) -> None:
        # Runs for every ClientHello, with or without SNI: the new connection gets the current material.
        # (None only for the moment an update switches the listener to the other backend: the handshake fails.)
        sslobj.context = self._generation.stdlib_ctx

    def _record_failure(self, message: str, reason: str = "Invalid") -> None:
        self._last_error = message
        self._last_refusal = {"reason": reason, "message": message,
                              "at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self._reloads_failed += 1
        self.metrics.reloads_failed.inc()
        self.metrics.material_refused(reason)
        if message != self._last_logged_error:
            log.error("TLS %s: reload refused, still serving the previous certificate: %s", self.listener_id,
                      message)
            self._last_logged_error = message

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load, validate, build and smoke-test; raise ``TlsConfigError`` when the listener cannot serve."""
        if self._started:
            return
        policy = validate_options(self._options, self._psk_config)
        self._shim = await asyncio.to_thread(compat.use_openssl_shim, self._registry)
        self._sslproto_class = compat.sslprotocol_class(asyncio.get_running_loop(), self._registry)
        refusal: TlsConfigError | None = None
        try:
            generation = await self._load(policy)
        except TlsConfigError as exc:
            refusal = exc
            generation = await self._last_accepted(policy, exc)
        self._commit(generation)
        if refusal is not None:
            self._last_error = self._last_logged_error = str(refusal)
            self._last_refusal = {"reason": refusal.reason, "message": str(refusal),
                                  "at": generation.loaded_at.isoformat()}
        else:
            await self._remember(generation)
        self._setup_services(policy)
        self._started = True

    async def _last_accepted(self, policy: TlsPolicy, refusal: TlsConfigError) -> Generation:
        """At start, when the files are refused: the last accepted material, or ``refusal`` (the listener does
        not start). Never the refused material."""
        self.metrics.material_refused(refusal.reason)
        kept = await asyncio.to_thread(accepted.load, self._accepted_dir, self.listener_id) \
            if self._accepted_dir is not None else None
        if kept is None:
            raise refusal
        try:
            snapshot = await asyncio.to_thread(snapshot_with, policy, kept.cert_pem, kept.key_pem, kept.server_ca_pem)
            generation = await asyncio.to_thread(self._build, policy, snapshot)
        except TlsConfigError as exc:
            raise TlsConfigError(f"{refusal}; the last accepted certificate (sha256 {kept.fingerprint}, kept "
                                 f"{kept.saved_at}) cannot serve either: {exc}", refusal.reason) from None
        log.error("TLS %s: the certificate files are refused (%s): %s; serving the last accepted certificate "
                  "(sha256 %s, kept %s) instead", self.listener_id, refusal.reason, refusal, kept.fingerprint,
                  kept.saved_at)
        return dataclasses.replace(generation, from_last_accepted=True)

    async def _remember(self, generation: Generation) -> None:
        """Keep ``generation``'s material as the last accepted (a failure to write is logged, not fatal)."""
        if self._accepted_dir is None:
            return
        snapshot = generation.material.snapshot
        try:
            await asyncio.to_thread(accepted.save, self._accepted_dir, self.listener_id, snapshot.cert_pem,
                                    snapshot.key_pem, snapshot.server_ca_pem, generation.fingerprint)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("TLS %s: could not keep the accepted certificate in %s: %s", self.listener_id,
                        self._accepted_dir, exc)

    def _setup_services(self, policy: TlsPolicy) -> None:
        if policy.enable_crl_check and self.crl_cache is None:
            self.crl_cache = CrlDistributionCache.shared(self._crl_config)
            self.crl_cache.acquire()
        if policy.ocsp_stapling and self._ocsp is None:
            self._ocsp = OcspStapler(self.listener_id, policy.ocsp_responder_url, policy.ocsp_refresh_interval,
                                     policy.ocsp_http_timeout, self._ocsp_subject)
            self._ocsp.start()
        elif not policy.ocsp_stapling and self._ocsp is not None:
            spawn(self._ocsp.stop())
            self._ocsp = None
        if self._reloader is None:
            self._reloader = PeriodicReloader(self)
            self._reloader.start()

    def _ocsp_subject(self):
        material = self.current_generation.material
        return material.leaf, material.ocsp_issuer

    @property
    def ocsp(self) -> OcspStapler | None:
        return self._ocsp

    async def create_server(self, protocol_factory: Callable[[], asyncio.Protocol], host: Any, port: int,
                            backlog: int = 1024, **kwargs: Any) -> TlsServer:
        if not self._started:
            raise RuntimeError(f"TLS listener {self.listener_id}: start() first")
        # ``pre_tls``: wraps the TLS protocol factory with something that reads plain bytes before the
        # handshake (the PROXY protocol header).
        pre_tls = kwargs.pop("pre_tls", None)
        server = TlsServer(self, protocol_factory, host, port, backlog, kwargs, pre_tls=pre_tls)
        await server.bind()
        self._servers.append(server)
        return server

    def _server_args(self, protocol_factory: Callable[[], asyncio.Protocol],
                     plain_socket: bool = False) -> tuple[Callable, dict]:
        """What ``loop.create_server`` needs for the current backend. ``plain_socket``: the server accepts
        plain TCP and the returned factory makes the TLS protocol itself (for something ahead of TLS)."""
        generation = self.current_generation
        if generation.backend == "stdlib" and plain_socket:
            protocol_class = self._sslproto_class or sslproto.SSLProtocol

            def tls_protocol() -> asyncio.BaseProtocol:
                return protocol_class(asyncio.get_running_loop(), _StdlibGate(self, protocol_factory()),
                                      self._base_ctx, None, server_side=True,
                                      ssl_handshake_timeout=generation.policy.handshake_timeout)
            return tls_protocol, {}
        if generation.backend == "stdlib":
            return (lambda: _StdlibGate(self, protocol_factory()),
                    {"ssl": self._base_ctx, "ssl_handshake_timeout": generation.policy.handshake_timeout})
        from .pyossl_transport import PyOpenSslBridge  # imports pyOpenSSL: only listeners on that backend get here

        return (lambda: PyOpenSslBridge(self, protocol_factory())), {}

    async def stop(self) -> None:
        if self._reloader is not None:
            await self._reloader.stop()
            self._reloader = None
        if self._ocsp is not None:
            await self._ocsp.stop()
            self._ocsp = None
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.crl_cache is not None:
            await self.crl_cache.release()
            self.crl_cache = None
        self.metrics.remove()
        self._started = False

    # -- reload ------------------------------------------------------------------------------------------------
    async def reload(self, expected_fingerprint: str | None = None, timeout: float = 0.0,
                     client_ca_sha256: str | None = None) -> ReloadResult:
        """Re-read the files; swap only if they changed and are valid. See the module docstring. With
        ``client_ca_guard``, a new cacertfile that connected clients would no longer verify against is held unless
        ``client_ca_sha256`` names it (``_hold_client_ca``), now or at a later re-check."""
        if client_ca_sha256:
            self._client_ca_approved = client_ca_sha256.lower()
        started = time.monotonic()
        expected = expected_fingerprint.lower().replace(":", "") if expected_fingerprint else None
        async with self._lock:
            policy = self.current_generation.policy
            while True:
                waited = time.monotonic() - started
                try:
                    snapshot = await asyncio.to_thread(read_snapshot, policy)
                except TlsConfigError as exc:  # an unreadable file
                    snapshot, read_error = None, str(exc)
                else:
                    read_error = None
                if expected is not None:
                    found = leaf_fingerprint(snapshot.cert_pem) if snapshot is not None else None
                    if found != expected:
                        if waited < timeout:
                            await asyncio.sleep(min(EXPECTED_FINGERPRINT_POLL, timeout - waited))
                            continue
                        return ReloadResult(False, self.current_generation.fingerprint,
                                            f"certfile carries {found or 'no certificate'}, not {expected}",
                                            waited, timed_out=True)
                if read_error is not None:
                    self._record_failure(read_error, "Unreadable")
                    return ReloadResult(False, self.current_generation.fingerprint, read_error, waited)
                if snapshot.digest == self.current_generation.digest:
                    self._last_reload_at = dt.datetime.now(dt.timezone.utc)
                    return ReloadResult(False, self.current_generation.fingerprint, None, waited)
                held = await self._hold_client_ca(policy, snapshot, self._client_ca_approved)
                if held is not None:
                    self._last_reload_at = dt.datetime.now(dt.timezone.utc)
                    return ReloadResult(False, self.current_generation.fingerprint, held, waited,
                                        client_ca_held=True)
                try:
                    generation = await asyncio.to_thread(self._build, policy, snapshot)
                except TlsConfigError as exc:
                    self._last_reload_at = dt.datetime.now(dt.timezone.utc)
                    self._record_failure(str(exc), exc.reason)
                    return ReloadResult(False, self.current_generation.fingerprint, str(exc), waited)
                self._commit(generation)
                self._last_reload_at = generation.loaded_at
                self._reloads_ok += 1
                self.metrics.reloads_ok.inc()
                await self._remember(generation)
                return ReloadResult(True, generation.fingerprint, None, time.monotonic() - started)

    async def _hold_client_ca(self, policy: TlsPolicy, snapshot: Snapshot, approved: str | None) -> str | None:
        """Why the new files are not loaded, when ``client_ca_guard`` holds their cacertfile back: it changed, and
        some connected client's certificate would no longer verify against it (``client_ca_check``), and
        ``approved`` (the bundle a reload named last) is not its SHA-256. None otherwise (the files go on to be
        validated and built as ever)."""
        current = self.current_generation.material
        if not policy.client_ca_guard or snapshot.ca_pem == current.snapshot.ca_pem:
            self._client_ca_held = None
            return None
        from . import client_ca_check

        digest = hashlib.sha256(snapshot.ca_pem).hexdigest()
        clients = self.client_certificates() if self.client_certificates is not None else []
        if approved == digest or not clients:
            self._client_ca_held = None
            return None
        try:
            report = await asyncio.to_thread(client_ca_check.check, self.listener_id, snapshot.ca_pem,
                                             list(current.ca_certs), clients, partial_chain=policy.partial_chain,
                                             depth=policy.depth)
        except client_ca_check.CandidateError:
            self._client_ca_held = None
            return None  # not a bundle at all: validation refuses it with its own reason
        if not report.would_fail:
            self._client_ca_held = None
            return None
        issuers = ", ".join(f"{issuer} ({count})" for issuer, count in sorted(report.issuers.items()))
        message = (f"cacertfile changed (sha256 {digest}), and {report.would_fail} connected client(s) would no "
                   f"longer verify against it: certificates issued by {issuers}; still serving the previous files "
                   f"(a reload with client_ca_sha256 = {digest} loads them anyway)")
        if (self._client_ca_held or {}).get("message") != message:
            log.warning("TLS %s: %s", self.listener_id, message)
        self._client_ca_held = {"sha256": digest, "would_fail": report.would_fail,
                                "issuers": report.as_dict()["issuers"], "message": message,
                                "at": dt.datetime.now(dt.timezone.utc).isoformat()}
        return message

    async def update_options(self, options: SslOptions) -> None:
        """Apply new ``ssl_options`` live; on any problem raise ``TlsConfigError`` and change nothing."""
        policy = validate_options(options, self._psk_config)
        async with self._lock:
            generation = await self._load(policy)
            old = self.current_generation
            rebind = (generation.backend != old.backend or
                      (generation.backend == "stdlib" and policy.handshake_timeout != old.policy.handshake_timeout))
            self._commit(generation)
            await self._remember(generation)
            self._options = options
            self._setup_services(policy)
            if self._reloader is not None:
                self._reloader.interval_changed()
        if rebind:
            # The backend or the stdlib handshake timeout is fixed per listening socket: rebind, keeping the
            # address; open connections stay with the old socket's server.
            for server in self._servers:
                await server.rebind()

    # -- status ------------------------------------------------------------------------------------------------
    def status(self) -> dict:
        generation = self._generation
        result: dict[str, Any] = {"listener": self.listener_id, "running": self._started}
        if generation is not None:
            result.update(generation.material.info.as_dict())
            result.update({
                "loaded_at": generation.loaded_at.isoformat(), "backend": generation.backend,
                "chain_verified_by_cacertfile": generation.material.chain_verified,
                "serving_last_accepted": generation.from_last_accepted,
                "warnings": list(generation.policy.warnings + generation.material.warnings),
            })
        result.update({
            "last_reload_at": self._last_reload_at.isoformat() if self._last_reload_at else None,
            "last_error": self._last_error, "last_refusal": self._last_refusal, "reloads_ok": self._reloads_ok,
            "reloads_failed": self._reloads_failed, "client_ca_held": self._client_ca_held,
        })
        result["compat"] = compat.status()
        if self._ocsp is not None:
            result["ocsp"] = self._ocsp.status()
        if generation is not None and generation.policy.enable_crl_check:
            result["crl"] = {"local_crls": len(generation.material.crls),
                             "distribution_points": self.crl_cache.status() if self.crl_cache else None}
        return result
