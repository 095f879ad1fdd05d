"""Semantic validation of ``ssl_options``: turns an ``SslOptions`` into an immutable ``TlsPolicy``.

The config loader has already checked types. The rules about the option values themselves (combinations EMQX
refuses, ranges, names) are the table in ``config/tls_rules.py``, shared with the loader and the Dashboard; this
module applies it and adds what only the TLS layer knows (cipher names the local OpenSSL does not know, versions
it cannot do, key usages as OIDs), so that a listener either starts with a policy that works or does not start
at all. Nothing here reads certificate files: that is ``material.py``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from ..config.model import PskAuthentication, SslOptions
from ..config.tls_rules import MAX_DEPTH, TLS13_SUITES, check_ssl_options, cipher_names
from .errors import TlsConfigError

VERSION_ORDER = ["tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3"]
STDLIB_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
LEGACY_VERSIONS = {"tlsv1", "tlsv1.1"}
EKU_NAMES = {
    "serverauth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientauth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codesigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailprotection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocspsigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}
__all__ = ["LEGACY_VERSIONS", "MAX_DEPTH", "STDLIB_VERSIONS", "TLS13_SUITES", "VERSION_ORDER", "TlsPolicy",
           "validate_options"]


@dataclass(frozen=True)
class TlsPolicy:
    """Everything about a listener's TLS that is not certificate material."""

    certfile: str
    keyfile: str
    cacertfile: str
    server_cacertfile: str  # the served certificate's issuers: set, the chain must lead to them or cacertfile
    crlfile: str
    password: str
    password_file: str
    verify_peer: bool
    fail_if_no_peer_cert: bool
    versions: tuple[str, ...]
    tls12_ciphers: str  # OpenSSL cipher string for TLS <= 1.2; "" = OpenSSL's default
    tls13_suites: str  # colon-separated TLS 1.3 suites; "" = OpenSSL's default
    depth: int
    handshake_timeout: float
    honor_cipher_order: bool
    reuse_sessions: bool
    secure_renegotiate: bool
    client_renegotiation: bool
    partial_chain: bool
    client_ca_guard: bool
    required_ekus: tuple[ObjectIdentifier, ...]
    enable_crl_check: bool
    ocsp_stapling: bool
    ocsp_responder_url: str
    ocsp_issuer_pem: str
    ocsp_refresh_interval: float
    ocsp_http_timeout: float
    psk_enabled: bool  # PSK suites offered on this listener (global PSK on, and a version <= 1.2 allowed)
    psk_file: str
    psk_separator: str
    reload_interval: float
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def min_version(self) -> str:
        return min(self.versions, key=VERSION_ORDER.index)

    @property
    def max_version(self) -> str:
        return max(self.versions, key=VERSION_ORDER.index)

    @property
    def legacy_versions(self) -> bool:
        return any(v in LEGACY_VERSIONS for v in self.versions)

    @property
    def needs_pyopenssl(self) -> bool:
        """OCSP stapling and PSK have no stdlib API: only those listeners pay for the pyOpenSSL backend."""
        return self.ocsp_stapling or self.psk_enabled

    def watched_files(self) -> list[str]:
        return [p for p in (self.certfile, self.keyfile, self.cacertfile, self.server_cacertfile, self.crlfile,
                            self.ocsp_issuer_pem, self.password_file, self.psk_file) if p]


def _parse_ekus(text: str) -> tuple[ObjectIdentifier, ...]:
    result = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.upper().startswith("OID:"):
            try:
                result.append(ObjectIdentifier(item[4:]))
            except ValueError as exc:
                raise TlsConfigError.of_option("verify_peer_ext_key_usage", f"bad OID {item!r}: {exc}") from None
        elif item.lower() in EKU_NAMES:
            result.append(EKU_NAMES[item.lower()])
        else:
            raise TlsConfigError.of_option("verify_peer_ext_key_usage", f"unknown usage {item!r} "
                                           f"(use {', '.join(sorted(EKU_NAMES))} or OID:<dotted>)")
    return tuple(result)


def _split_ciphers(ciphers: list[str]) -> tuple[str, str]:
    """The TLS <= 1.2 cipher string and the TLS 1.3 suites (their names checked by ``tls_rules``)."""
    names = cipher_names(ciphers)
    return (":".join(n for n in names if not n.startswith("TLS_")),
            ":".join(n for n in names if n.startswith("TLS_")))


# Long on purpose: the checks only the TLS layer can make, one after another, then the policy.
def validate_options(options: SslOptions, psk: PskAuthentication | None = None) -> TlsPolicy:  # noqa: C901
    """Check ``options`` as a whole; raise ``TlsConfigError`` naming the option(s) on a problem.

    Broken rules of ``tls_rules`` are raised together, each in the error's ``problems``.
    """
    problems = check_ssl_options(options)
    if problems:
        raise TlsConfigError("; ".join(map(str, problems)), problems=problems)
    warnings: list[str] = []
    verify_peer = options.verify == "verify_peer"
    if options.crlfile and not options.enable_crl_check:
        warnings.append("crlfile is set but enable_crl_check is false: the CRL is not checked")

    versions = tuple(options.versions)
    legacy = [v for v in versions if v in LEGACY_VERSIONS]
    if legacy:
        if ("tlsv1" in legacy and not ssl.HAS_TLSv1) or ("tlsv1.1" in legacy and not ssl.HAS_TLSv1_1):
            raise TlsConfigError.of_option(
                "versions", f"the local OpenSSL ({ssl.OPENSSL_VERSION}) cannot do {', '.join(legacy)}")
        warnings.append(f"versions: {', '.join(legacy)} are outdated and insecure; enabled because they were "
                        "asked for (cipher security level lowered to 0 on this listener)")
    if "tlsv1.3" in versions and not ssl.HAS_TLSv1_3:
        raise TlsConfigError.of_option("versions", f"the local OpenSSL ({ssl.OPENSSL_VERSION}) cannot do tlsv1.3")

    tls12, tls13 = _split_ciphers(options.ciphers)
    if tls12:
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.set_ciphers(tls12 + (":@SECLEVEL=0" if legacy else ""))
        except ssl.SSLError:
            raise TlsConfigError.of_option("ciphers", f"OpenSSL knows none of {tls12!r}") from None
    if tls12 and not any(v != "tlsv1.3" for v in versions):
        warnings.append("ciphers: TLS <= 1.2 ciphers are listed but only tlsv1.3 is enabled")
    if tls13 and "tlsv1.3" not in versions:
        warnings.append("ciphers: TLS 1.3 suites are listed but tlsv1.3 is not enabled")

    ekus = _parse_ekus(options.verify_peer_ext_key_usage)

    ocsp = options.ocsp
    if ocsp.enable_ocsp_stapling:
        if ocsp.refresh_interval < 60:
            warnings.append("ocsp.refresh_interval below 1 minute puts load on the OCSP responder")

    psk_enabled = False
    psk_file = ""
    separator = ":"
    if psk is not None and psk.enable:
        if not psk.init_file:
            raise TlsConfigError("psk_authentication.init_file is required when psk_authentication.enable = true")
        if not psk.separator:
            raise TlsConfigError("psk_authentication.separator must not be empty")
        if any(v != "tlsv1.3" for v in versions):
            psk_enabled, psk_file, separator = True, psk.init_file, psk.separator
        else:
            warnings.append("psk_authentication is on but this listener only allows tlsv1.3: no PSK suites here")

    return TlsPolicy(
        certfile=options.certfile, keyfile=options.keyfile, cacertfile=options.cacertfile,
        server_cacertfile=getattr(options, "server_cacertfile", ""),
        crlfile=options.crlfile if options.enable_crl_check else "", password=options.password,
        password_file=getattr(options, "password_file", ""),
        verify_peer=verify_peer, fail_if_no_peer_cert=options.fail_if_no_peer_cert,
        versions=versions, tls12_ciphers=tls12, tls13_suites=tls13, depth=options.depth,
        handshake_timeout=float(options.handshake_timeout), honor_cipher_order=options.honor_cipher_order,
        reuse_sessions=options.reuse_sessions, secure_renegotiate=options.secure_renegotiate,
        client_renegotiation=options.client_renegotiation, partial_chain=options.partial_chain,
        client_ca_guard=verify_peer and getattr(options, "client_ca_guard", False),
        required_ekus=ekus, enable_crl_check=options.enable_crl_check,
        ocsp_stapling=ocsp.enable_ocsp_stapling, ocsp_responder_url=ocsp.responder_url,
        ocsp_issuer_pem=ocsp.issuer_pem, ocsp_refresh_interval=float(ocsp.refresh_interval),
        ocsp_http_timeout=float(ocsp.refresh_http_timeout), psk_enabled=psk_enabled, psk_file=psk_file,
        psk_separator=separator, reload_interval=float(options.reload_interval), warnings=tuple(warnings),
    )
