"""TLS metrics, and how handshake failures are seen at all.

With ``create_server(ssl=...)`` a failed handshake never reaches the application (asyncio and uvloop drop the
``SSLError``). The base context's ``sslobject_class`` is therefore a subclass of ``ssl.SSLObject`` whose
``do_handshake`` notes the failure reason; a connection that ends before its handshake finished (a timeout,
a port probe, a client that hangs up) is counted as ``aborted`` when its SSL object goes away. Only the
handshake is wrapped: reads and writes run the stdlib code unchanged.
"""

from __future__ import annotations

import ssl

from ..metrics import REGISTRY, Registry

# OpenSSL X509_V_ERR codes worth their own label.
VERIFY_REASONS = {
    10: "certificate_expired", 9: "certificate_not_yet_valid", 23: "certificate_revoked",
    2: "unknown_ca", 20: "unknown_ca", 21: "unknown_ca", 18: "unknown_ca", 19: "unknown_ca",
    22: "chain_too_long", 26: "bad_certificate_purpose", 3: "crl_unavailable", 12: "crl_unavailable",
    11: "crl_unavailable", 8: "crl_unavailable",
}


def reason_of(exc: BaseException) -> str:
    """A short, bounded label for a handshake failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VERIFY_REASONS.get(exc.verify_code, "certificate_verify_failed")
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        reason = reason.lower()
        for prefix in ("sslv3_alert_", "tlsv13_alert_", "tlsv1_alert_"):
            if reason.startswith(prefix):
                return "peer_alert_" + reason[len(prefix):]
        return reason
    return type(exc).__name__.lower()


class TlsMetrics:
    """The TLS metric families of one registry, and the children for one listener."""

    def __init__(self, listener: str, registry: Registry = REGISTRY) -> None:
        self.listener = listener
        self.reloads = registry.counter("wharf_tls_reloads_total",
                                        "Certificate reloads by result (ok, failed)", ["listener", "result"])
        self.refused = registry.counter("wharf_tls_material_refused_total",
                                        "Certificate material refused (never served), by reason",
                                        ["listener", "reason"])
        self.failures = registry.counter("wharf_tls_handshake_failures_total",
                                         "TLS handshakes that failed, by reason", ["listener", "reason"])
        self.handshakes = registry.counter("wharf_tls_handshakes_total", "TLS handshakes completed",
                                           ["listener"])
        self.expiry = registry.gauge("wharf_tls_certificate_expiry_timestamp_seconds",
                                     "notAfter of the served certificate (Unix time)", ["listener"])
        self.backends = registry.gauge("wharf_tls_listener_backend", "The TLS backend serving a listener (1)",
                                       ["listener", "backend"])
        self._backend: str | None = None
        self.reloads_ok = self.reloads.labels(listener=listener, result="ok")
        self.reloads_failed = self.reloads.labels(listener=listener, result="failed")
        self.handshakes_ok = self.handshakes.labels(listener=listener)
        self.expiry_child = self.expiry.labels(listener=listener)

    def failed(self, reason: str) -> None:
        self.failures.labels(listener=self.listener, reason=reason).inc()

    def material_refused(self, reason: str) -> None:
        self.refused.labels(listener=self.listener, reason=reason).inc()

    def backend_is(self, backend: str) -> None:
        if backend != self._backend:
            if self._backend is not None:
                self.backends.remove(listener=self.listener, backend=self._backend)
            self.backends.labels(listener=self.listener, backend=backend).set(1)
            self._backend = backend

    def remove(self) -> None:
        self.expiry.remove(listener=self.listener)
        if self._backend is not None:
            self.backends.remove(listener=self.listener, backend=self._backend)
            self._backend = None


class ObservedSSLObject(ssl.SSLObject):
    """An ``SSLObject`` that reports handshake failures to ``_metrics`` (set on a per-listener subclass)."""

    _metrics: TlsMetrics
    _handshake_state = "pending"  # pending -> done | failed

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if self._handshake_state == "pending":
                self._handshake_state = "failed"
                self._metrics.failed(reason_of(exc))
            raise
        self._handshake_state = "done"

    def __del__(self) -> None:
        if self._handshake_state == "pending":
            self._metrics.failed("aborted")


def observed_sslobject_class(metrics: TlsMetrics) -> type[ssl.SSLObject]:
    return type("ObservedSSLObject_" + metrics.listener, (ObservedSSLObject,), {"_metrics": metrics})
