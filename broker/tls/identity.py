"""Who is on the other end of a TLS connection: ``peer_identity(transport)`` for both backends.

``PeerIdentity.as_identity(mode)`` renders the client certificate the way EMQX does for
``peer_cert_as_username`` / ``peer_cert_as_clientid``:

- ``cn``: the subject's CN values joined with ``,``;
- ``dn``: the RFC 4514 subject (most specific RDN first), e.g. ``CN=dev-001,O=Acme,C=SE``;
- ``crt``: the DER bytes; ``pem``: base64 of the DER, without PEM armour; ``md5``: hex MD5 of the DER.

CN and DN with control characters (0x00-0x1F, 0x7F-0x9F) are refused (``ValueError``), as EMQX does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.x509.oid import NameOID

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
IDENTITY_MODES = ("cn", "dn", "crt", "pem", "md5")


@dataclass(frozen=True, eq=False)
class PeerIdentity:
    der: bytes | None  # the verified client certificate (leaf), None without one
    tls_version: str
    cipher: str
    # The PSK identity, only when the handshake really used that pre-shared key.
    psk_identity: str | None = None
    # The subject as the stdlib already decoded it during the handshake (``getpeercert()``'s RDN tuples), when
    # at hand: the CN then costs no certificate parsing, which every CONNECT would otherwise pay.
    subject: tuple | None = None

    @cached_property
    def certificate(self) -> x509.Certificate | None:
        return x509.load_der_x509_certificate(self.der) if self.der else None

    @cached_property
    def cn(self) -> str | None:
        if not self.der:
            return None
        if self.subject is not None:
            values = [value for rdn in self.subject for name, value in rdn if name == "commonName"]
            return ",".join(values) if values else None
        certificate = self.certificate
        if certificate is None:  # not when ``der`` is there
            return None
        values = [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return ",".join(values) if values else None

    @cached_property
    def dn(self) -> str | None:
        return None if self.certificate is None else self.certificate.subject.rfc4514_string()

    @property
    def pem(self) -> str | None:
        return None if self.der is None else base64.b64encode(self.der).decode()

    @property
    def md5(self) -> str | None:
        return None if self.der is None else hashlib.md5(self.der).hexdigest()

    @property
    def fingerprint_sha256(self) -> str | None:
        return None if self.der is None else hashlib.sha256(self.der).hexdigest()

    def as_identity(self, mode: str) -> str | bytes | None:
        """The identity for ``mode`` (cn|dn|crt|pem|md5); None without a client certificate."""
        if mode not in IDENTITY_MODES:
            raise ValueError(f"peer certificate identity mode must be one of {', '.join(IDENTITY_MODES)}, "
                             f"not {mode!r}")
        if self.der is None:
            return None
        if mode in ("cn", "dn"):
            value = self.cn if mode == "cn" else self.dn
            if value is not None and _CONTROL.search(value):
                raise ValueError(f"client certificate {mode.upper()} contains control characters")
            return value
        if mode == "crt":
            return self.der
        return self.pem if mode == "pem" else self.md5


def peer_identity(transport) -> PeerIdentity | None:
    """The TLS identity of a connection, or None for a transport that is not TLS (or not yet handshaken)."""
    source = transport.get_extra_info("wharf_peer_identity")
    if source is not None:  # the pyOpenSSL backend computes it itself
        return source
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None or sslobj.version() is None:
        return None
    cipher = sslobj.cipher()
    der = sslobj.getpeercert(binary_form=True)
    # asyncio and uvloop keep the decoded certificate of a verified peer as "peercert".
    decoded = transport.get_extra_info("peercert") if der is not None else None
    subject = decoded.get("subject") if isinstance(decoded, dict) else None
    return PeerIdentity(der=der, tls_version=sslobj.version() or "", cipher=cipher[0] if cipher else "",
                        subject=subject)
