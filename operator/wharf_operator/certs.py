"""Validation of TLS Secret material before any broker is told to load it.

A rotation is only signalled when the new material would work: the chain and key parse, the key belongs to
the leaf certificate, the leaf chains (through the intermediates in ``tls.crt``) to a trusted CA (the caller
passes the Secret's ``ca.crt`` and the listener's CA bundle), and the leaf is inside its validity window. Anything else is refused with a reason code and a message that say
what is wrong, and the brokers keep what they serve.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

# Reasons used in the CertificatesReady condition and in events.
MISSING = "SecretMissing"
UNPARSABLE = "CertificateUnparsable"
KEY_MISMATCH = "KeyMismatch"
UNTRUSTED = "ChainUntrusted"
NOT_YET_VALID = "NotYetValid"
EXPIRED = "Expired"


class InvalidMaterial(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Material:
    """What a valid Secret holds, as the operator reports it."""

    fingerprint: str  # lowercase hex SHA-256 of the leaf's DER, as the broker's admin API reports it
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    chain_checked: bool  # False when no CA bundle was available to check against
    trust_digest: str = ""  # SHA-256 of the CA bundle checked against: a CA-only change changes it

    @property
    def signature(self) -> str:
        """What the pods must have loaded: the leaf and the trusted CAs."""
        return f"{self.fingerprint}/{self.trust_digest}"


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def secret_bytes(secret: dict, key: str) -> bytes | None:
    """A key of a Secret object's data (base64), or of its stringData (as written by some tools)."""
    data = secret.get("data") or {}
    if key in data and data[key] is not None:
        return base64.b64decode(data[key])
    string_data = secret.get("stringData") or {}
    if key in string_data and string_data[key] is not None:
        return string_data[key].encode()
    return None


def configmap_bytes(configmap: dict, key: str) -> bytes | None:
    data = configmap.get("data") or {}
    if key in data:
        return data[key].encode()
    binary = configmap.get("binaryData") or {}
    if key in binary:
        return base64.b64decode(binary[key])
    return None


def _load_chain(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidMaterial(UNPARSABLE, f"{what} is not a PEM certificate chain: {exc}") from None
    if not chain:
        raise InvalidMaterial(UNPARSABLE, f"{what} holds no certificate")
    return chain


def _load_key(pem: bytes, password: bytes | None):
    try:
        return serialization.load_pem_private_key(pem, password=password or None)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        raise InvalidMaterial(UNPARSABLE, f"tls.key: {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidMaterial(UNPARSABLE, f"tls.key is not a usable private key (or the password is wrong): "
                                          f"{exc}") from None


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_chain(chain: list[x509.Certificate], anchors: list[x509.Certificate], max_depth: int = 10) -> None:
    """Walk from the leaf through the given intermediates to one of the anchors."""
    current = chain[0]
    intermediates = chain[1:]
    for _ in range(max_depth + 2):
        if any(_issued_by(current, anchor) for anchor in anchors) or \
                any(fingerprint(current) == fingerprint(anchor) for anchor in anchors):
            return
        parent = next((c for c in intermediates if c is not current and _issued_by(current, c)), None)
        if parent is None:
            break
        current = parent
    raise InvalidMaterial(UNTRUSTED, f"certificate {chain[0].subject.rfc4514_string()!r} does not chain to "
                                     f"the trusted CA bundle (issuer {current.issuer.rfc4514_string()!r})")


def validate(cert_pem: bytes | None, key_pem: bytes | None, ca_pem: bytes | None = None,
             password: bytes | None = None, now: datetime.datetime | None = None) -> Material:
    """Check server material; returns what it holds or raises ``InvalidMaterial``."""
    if not cert_pem:
        raise InvalidMaterial(MISSING, "tls.crt is missing or empty")
    if not key_pem:
        raise InvalidMaterial(MISSING, "tls.key is missing or empty")
    chain = _load_chain(cert_pem, "tls.crt")
    leaf = chain[0]
    key = _load_key(key_pem, password)
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise InvalidMaterial(KEY_MISMATCH, "tls.key does not belong to the certificate in tls.crt")
    chain_checked = False
    if ca_pem:
        _check_chain(chain, _load_chain(ca_pem, "the CA bundle"))
        chain_checked = True
    now = now or datetime.datetime.now(datetime.UTC)
    if now < leaf.not_valid_before_utc:
        raise InvalidMaterial(NOT_YET_VALID, f"the certificate is not valid before {leaf.not_valid_before_utc.isoformat()}")
    if now > leaf.not_valid_after_utc:
        raise InvalidMaterial(EXPIRED, f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}")
    return Material(fingerprint=fingerprint(leaf), subject=leaf.subject.rfc4514_string(),
                    not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
                    chain_checked=chain_checked,
                    trust_digest=hashlib.sha256(ca_pem).hexdigest() if ca_pem else "")
