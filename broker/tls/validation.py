"""The checks a server certificate must pass before anything serves it, shared by the broker and the operator.

One module, so the operator's gate (``wharf_operator.certs``: refuse a Secret, signal nothing) and the broker's
(``material.validate_snapshot``: refuse a reload, keep serving) cannot drift apart. Each check raises
``MaterialRefused`` with a reason code (the operator's condition reasons, the broker's metric label) and a
message that names the file and never holds key material:

- the chain and the key parse (the key with its password);
- the key belongs to the leaf (``KeyMismatch``);
- each certificate of the chain is issued by the next one (``ChainMisordered``);
- the leaf chains, through the intermediates, to one of the trust anchors when there are any
  (``ChainUntrusted``): the operator passes the pinned issuer CAs (``tls.trustedIssuerCARef``) or else the
  Secret's ``ca.crt``, and the listener's CA bundle; the broker ``server_cacertfile`` (which the operator renders
  as that same pinned bundle or ``ca.crt``) and ``cacertfile`` (docs/tls.md, "Reload");
- the leaf is inside its validity window (``NotYetValid``, ``Expired``).

Neither side checks key usage, extended key usage or host names of the served certificate: clients do.
Depends on ``cryptography`` only, so that the operator loads nothing else of the broker through it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

MISSING = "SecretMissing"
UNPARSABLE = "CertificateUnparsable"
KEY_MISMATCH = "KeyMismatch"
MISORDERED = "ChainMisordered"
UNTRUSTED = "ChainUntrusted"
NOT_YET_VALID = "NotYetValid"
EXPIRED = "Expired"
REASONS = (MISSING, UNPARSABLE, KEY_MISMATCH, MISORDERED, UNTRUSTED, NOT_YET_VALID, EXPIRED)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class MaterialRefused(ValueError):
    """Material that must not be served: ``reason`` is one of ``REASONS``, ``message`` says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Checked:
    """Material that passed every check."""

    chain: tuple[x509.Certificate, ...]  # leaf first
    anchors: tuple[x509.Certificate, ...]
    chain_checked: bool  # False when there was no trust anchor to check against
    private_key: object = field(repr=False, compare=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER (what the admin API and the operator's status show)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_certs(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """Every PEM certificate in ``data``, in order; text around them (comments, bag attributes) is ignored."""
    blocks = _PEM_CERT.findall(data or b"")
    if not blocks:
        raise MaterialRefused(UNPARSABLE, f"{what}: no PEM certificate in it (empty, garbage or half-written "
                                          "file?)")
    certs = []
    for number, block in enumerate(blocks, 1):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise MaterialRefused(UNPARSABLE, f"{what}: certificate #{number} does not parse: {exc}") from None
    return tuple(certs)


def load_key(data: bytes, password: bytes | None, what: str):
    if not (data or b"").strip():
        raise MaterialRefused(MISSING, f"{what}: empty")
    try:
        return serialization.load_pem_private_key(data, password or None)
    except TypeError as exc:
        if "not encrypted" in str(exc):
            raise MaterialRefused(UNPARSABLE, f"{what}: password is set but the key is not encrypted") from None
        raise MaterialRefused(UNPARSABLE, f"{what}: the key is encrypted and no password is set") from None
    except ValueError as exc:
        # A wrong password mostly fails the decryption, but now and then (about 1 in 256 for a CBC-encrypted
        # legacy PEM) the padding checks out and the garbage fails to parse instead: for an encrypted key with a
        # password, any failure is the password (or a damaged file).
        encrypted = b"ENCRYPTED" in data
        if password and (encrypted or "decrypt" in str(exc).lower() or "password" in str(exc).lower()):
            raise MaterialRefused(UNPARSABLE, f"{what}: wrong password for the encrypted key") from None
        raise MaterialRefused(UNPARSABLE, f"{what}: not a usable PEM private key: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise MaterialRefused(UNPARSABLE, f"{what}: unsupported key type: {exc}") from None


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def check_key_matches(key, leaf: x509.Certificate, key_what: str, cert_what: str) -> None:
    if spki(key.public_key()) != spki(leaf.public_key()):
        raise MaterialRefused(KEY_MISMATCH, f"{key_what} does not match the first certificate in {cert_what} "
                                            "(half-updated pair?)")


def check_order(chain: tuple[x509.Certificate, ...], what: str) -> None:
    for number, (cert, issuer) in enumerate(zip(chain, chain[1:]), 1):
        if not issued_by(cert, issuer):
            raise MaterialRefused(MISORDERED, f"{what}: certificate #{number} is not issued by certificate "
                                              f"#{number + 1} (the chain must be leaf first, each followed by "
                                              "its issuer)")


def leads_to(chain: tuple[x509.Certificate, ...], anchors: tuple[x509.Certificate, ...]) -> bool:
    """Whether some certificate of ``chain`` is an anchor or is issued by one (the leaf on its own counts)."""
    for cert in chain:
        for anchor in anchors:
            if spki(cert.public_key()) == spki(anchor.public_key()) and cert.subject == anchor.subject:
                return True
            if issued_by(cert, anchor):
                return True
    return False


def check_trust(chain: tuple[x509.Certificate, ...], anchors: tuple[x509.Certificate, ...], what: str,
                anchors_what: str) -> None:
    if not leads_to(chain, anchors):
        raise MaterialRefused(UNTRUSTED, f"{what}: certificate {chain[0].subject.rfc4514_string()!r} does not "
                                         f"chain to {anchors_what} (issuer {chain[-1].issuer.rfc4514_string()!r})")


def check_validity(leaf: x509.Certificate, now: dt.datetime, what: str) -> None:
    window = f"valid {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if now < leaf.not_valid_before_utc:
        raise MaterialRefused(NOT_YET_VALID, f"{what}: certificate not valid now: not yet valid ({window})")
    if now > leaf.not_valid_after_utc:
        raise MaterialRefused(EXPIRED, f"{what}: certificate not valid now: expired ({window})")


def check_server_material(cert_pem: bytes | None, key_pem: bytes | None, anchors_pem: bytes | None = None,
                          password: bytes | None = None, now: dt.datetime | None = None, *,
                          names: tuple[str, str, str] = ("tls.crt", "tls.key", "the trusted CA bundle")) -> Checked:
    """Run every check on one server certificate chain and its key; ``names`` name the cert, key and anchors in
    messages. No anchors (``anchors_pem`` empty): the chain is not checked against any (``chain_checked`` False).
    """
    cert_what, key_what, anchors_what = names
    if not cert_pem:
        raise MaterialRefused(MISSING, f"{cert_what}: missing or empty")
    chain = load_certs(cert_pem, cert_what)
    key = load_key(key_pem or b"", password, key_what)  # an empty one: MISSING
    check_key_matches(key, chain[0], key_what, cert_what)
    check_order(chain, cert_what)
    anchors: tuple[x509.Certificate, ...] = ()
    if anchors_pem and anchors_pem.strip():
        anchors = load_certs(anchors_pem, anchors_what)
        check_trust(chain, anchors, cert_what, anchors_what)
    check_validity(chain[0], now or dt.datetime.now(dt.timezone.utc), cert_what)
    return Checked(chain=chain, anchors=anchors, chain_checked=bool(anchors), private_key=key)
