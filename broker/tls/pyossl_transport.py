"""The pyOpenSSL backend: TLS over a memory BIO, driven by an ordinary asyncio protocol.

Used only by listeners that need OCSP stapling or PSK (the stdlib has no API for either). The bridge is the
raw TCP connection's protocol and, towards the application, an ``asyncio.Transport``: the application
protocol sees ``connection_made`` only after the handshake and the post-handshake checks passed, exactly as
with the stdlib backend. The context is chosen when the TCP connection arrives, so a reload needs no tricks
and has no start_tls race (works the same on asyncio and uvloop).

The runtime imports this module (and with it pyOpenSSL) only when a listener uses this backend. Session reuse and
the precise verify-failure reason come from pyOpenSSL's private bindings (``compat/pyopenssl.py``); without them a
handshake counts as possibly resumed (the local CRL is checked again) and a failed verification as
``certificate_verify_failed``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from ..tasks import spawn
from .compat.pyopenssl import load as load_pyopenssl
from .handshake_metrics import VERIFY_REASONS
from .identity import PeerIdentity
from .peer_checks import settle
from .psk import used_psk_identity

if TYPE_CHECKING:
    from .runtime import Generation, TlsListenerRuntime

log = logging.getLogger("wharf.tls")
_READ_CHUNK = 65536


def _openssl_reason(exc: SSL.Error) -> str:
    try:
        reason = exc.args[0][-1][2]
        return reason.lower().replace(" ", "_")
    except (IndexError, TypeError, AttributeError):
        return "ssl_error"


def _stdlib_name(name) -> tuple:
    """A cryptography Name in the shape of ``ssl.SSLObject.getpeercert()``'s subject/issuer."""
    return tuple(tuple((attr.oid._name, str(attr.value)) for attr in rdn) for rdn in name.rdns)


class SslObjectView:
    """``get_extra_info("ssl_object")`` for a pyOpenSSL connection, with the ``ssl.SSLObject`` methods that
    asyncio-level code reads (version, cipher, peer certificate, ALPN, resumption). ``connection`` is the
    pyOpenSSL ``SSL.Connection`` itself."""

    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def version(self) -> str | None:
        return self.connection.get_protocol_version_name()

    def cipher(self) -> tuple[str, str, int] | None:
        name = self.connection.get_cipher_name()
        if name is None:
            return None
        return name, self.connection.get_cipher_version(), self.connection.get_cipher_bits()

    def getpeercert(self, binary_form: bool = False):
        cert = self.connection.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        if binary_form:
            return cert.public_bytes(Encoding.DER)
        info = {"subject": _stdlib_name(cert.subject), "issuer": _stdlib_name(cert.issuer),
                "serialNumber": format(cert.serial_number, "X"),
                "notBefore": cert.not_valid_before_utc.strftime("%b %d %H:%M:%S %Y GMT"),
                "notAfter": cert.not_valid_after_utc.strftime("%b %d %H:%M:%S %Y GMT")}
        return info

    def selected_alpn_protocol(self) -> str | None:
        protocol = self.connection.get_alpn_proto_negotiated()
        return protocol.decode() if protocol else None

    @property
    def session_reused(self) -> bool:
        loaded = load_pyopenssl()
        return loaded is not None and loaded.session_reused(self.connection) is True

    def compression(self) -> None:
        return None


class PyOpenSslBridge(asyncio.Protocol, asyncio.Transport):
    def __init__(self, runtime: "TlsListenerRuntime", app: asyncio.Protocol) -> None:
        asyncio.Transport.__init__(self)
        self._runtime = runtime
        self._app = app
        self._raw: asyncio.Transport | None = None
        self._conn: SSL.Connection | None = None
        self._generation: "Generation | None" = None
        self._state = "handshake"  # handshake -> checking -> open -> closing -> closed
        self._timer: asyncio.TimerHandle | None = None
        self._identity: PeerIdentity | None = None
        self._pending_plain: list[bytes] = []
        self._app_paused_reading = False
        self.psk_table: dict[bytes, bytes] = {}
        self.psk_offered: bytes | None = None

    # -- raw side -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        generation = self._generation = self._runtime.current_generation
        if generation.pyossl_ctx is None:  # the listener is being rebound onto the stdlib backend
            self._state = "closed"
            transport.abort()
            return
        self.psk_table = generation.psk_table
        self._conn = SSL.Connection(generation.pyossl_ctx, None)
        self._conn.set_app_data(self)
        self._conn.set_accept_state()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(generation.policy.handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        if self._state == "handshake":
            self._runtime.metrics.failed("handshake_timeout")
            self._state = "closed"
            self._raw.abort()

    def data_received(self, data: bytes) -> None:
        if self._state == "closed":
            return
        self._conn.bio_write(data)
        if self._state == "handshake":
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error as exc:
                self._fail(self._failure_reason(exc))
                return
            self._handshake_done()
        # Application data may have come in the same chunk as the handshake's end: read it now (it is held
        # back while the post-handshake checks run).
        self._read_plaintext()

    def _read_plaintext(self) -> None:
        while self._state in ("open", "checking"):
            try:
                chunk = self._conn.recv(_READ_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._flush()
                self._deliver_eof()
                return
            except SSL.Error as exc:
                log.debug("TLS record error on %s: %s", self._runtime.listener_id, exc)
                self._flush()
                self._raw.abort()
                return
            if self._state == "checking":
                self._pending_plain.append(chunk)
            else:
                self._app.data_received(chunk)
        self._flush()

    def _deliver_eof(self) -> None:
        if self._state == "open":
            keep_open = self._app.eof_received()
            if not keep_open:
                self.close()

    def _failure_reason(self, exc: SSL.Error) -> str:
        reason = _openssl_reason(exc)
        loaded = load_pyopenssl()
        code = loaded.verify_result(self._conn) if loaded is not None and reason == "certificate_verify_failed" \
            else None
        if code is not None:
            reason = VERIFY_REASONS.get(code, reason)
        return reason

    def _fail(self, reason: str) -> None:
        self._runtime.metrics.failed(reason)
        self._state = "closed"
        self._cancel_timer()
        self._flush()  # sends our alert
        self._raw.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handshake_done(self) -> None:
        self._cancel_timer()
        self._runtime.metrics.handshakes_ok.inc()
        conn = self._conn
        cert = conn.get_peer_certificate()
        der = cert.to_cryptography().public_bytes(Encoding.DER) if cert is not None else None
        loaded = load_pyopenssl()
        reused = loaded.session_reused(conn) if loaded is not None else None
        self._identity = PeerIdentity(der=der, tls_version=conn.get_protocol_version_name() or "",
                                      cipher=conn.get_cipher_name() or "",
                                      psk_identity=used_psk_identity(conn, self.psk_offered, reused))
        self._state = "checking"
        # Unknown reuse (no private bindings) is checked as a resumed session: the local CRL once more.
        verdict = self._runtime.checker.check_now(der, reused is not False)
        if verdict is not None and not isinstance(verdict, str):
            self._raw.pause_reading()
            spawn(self._finish_checks(verdict))
            return
        self._decide(verdict)

    async def _finish_checks(self, pending) -> None:
        verdict = await settle(pending)
        if self._state == "checking":
            self._decide(verdict)
            if self._state == "open":
                self._raw.resume_reading()

    def _decide(self, verdict: str | None) -> None:
        if verdict:
            self._runtime.metrics.failed(verdict)
            self._state = "closed"
            self._raw.close()
            return
        self._state = "open"
        self._runtime.track(self, SslObjectView(self._conn))
        self._app.connection_made(self)
        pending, self._pending_plain = self._pending_plain, []
        for chunk in pending:
            if self._state == "open":
                self._app.data_received(chunk)

    def _flush(self) -> None:
        if self._conn is None or self._raw is None or self._raw.is_closing():
            return
        while True:
            try:
                data = self._conn.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                return
            if not data:
                return
            self._raw.write(data)

    def eof_received(self) -> bool | None:
        if self._state == "open":
            return self._app.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._state == "handshake":
            self._runtime.metrics.failed("aborted")
        was_open = self._state in ("open", "closing")
        self._state = "closed"
        if was_open:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._state in ("open", "closing"):
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._state in ("open", "closing"):
            self._app.resume_writing()

    # -- application side (asyncio.Transport) ---------------------------------------------------------------
    def write(self, data) -> None:
        if self._state != "open":
            return
        view = memoryview(data)
        while view:
            try:
                sent = self._conn.send(view[:16384])
            except SSL.Error as exc:
                # With memory BIOs a send cannot block; an error here means the TLS session is broken.
                log.debug("TLS write error on %s: %s", self._runtime.listener_id, exc)
                self.abort()
                return
            view = view[sent:]
            self._flush()

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if self._state not in ("open", "checking"):
            return
        self._state = "closing"
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._state = "closing"
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._state in ("closing", "closed") or self._raw is None or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._app_paused_reading = True
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._app_paused_reading = False
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return not self._app_paused_reading and self._raw.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default=None):
        if name == "wharf_peer_identity":
            return self._identity
        if name == "ssl_object":
            return SslObjectView(self._conn) if self._conn is not None else default
        if name == "peercert":
            return SslObjectView(self._conn).getpeercert() if self._conn is not None else default
        if name == "cipher":
            return SslObjectView(self._conn).cipher() if self._conn is not None else default
        if name == "sslcontext":
            return self._generation.pyossl_ctx if self._generation else default
        return self._raw.get_extra_info(name, default) if self._raw is not None else default

