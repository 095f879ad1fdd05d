"""Certificate material: read the files once (a snapshot), then validate exactly those bytes.

A reload never loads a file twice: ``read_snapshot`` reads certfile, keyfile, cacertfile, crlfile (and the OCSP
issuer) into memory and hashes their *contents* (a Kubernetes ``..data`` symlink flip, ``cp -p`` or an
unchanged mtime are all seen); ``validate_snapshot`` parses and checks them with ``cryptography`` and returns
``Material``, from which the TLS contexts are built. Runs in a worker thread: key decryption can be slow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from .errors import TlsConfigError
from .options import TlsPolicy

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)
EXPIRY_WARNING = dt.timedelta(days=14)


@dataclass(frozen=True)
class Snapshot:
    """The bytes of every file a listener's TLS uses, read once, and a digest over all of them."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    crl_pem: bytes
    ocsp_issuer_pem: bytes
    password: bytes
    psk_lines: bytes
    digest: str


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    sans: tuple[str, ...]
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str
    serial: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> "CertificateInfo":
        try:
            san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = tuple([f"DNS:{v}" for v in san_ext.get_values_for_type(x509.DNSName)] +
                         [f"IP:{v}" for v in san_ext.get_values_for_type(x509.IPAddress)])
        except x509.ExtensionNotFound:
            sans = ()
        return cls(subject=cert.subject.rfc4514_string(), sans=sans, issuer=cert.issuer.rfc4514_string(),
                   not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                   fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(), serial=format(cert.serial_number, "x"))

    def as_dict(self) -> dict:
        return {"subject": self.subject, "sans": list(self.sans), "issuer": self.issuer,
                "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
                "fingerprint_sha256": self.fingerprint_sha256, "serial": self.serial}


@dataclass(frozen=True)
class Material:
    """A validated snapshot: the parsed objects the contexts and post-handshake checks need."""

    snapshot: Snapshot
    chain: tuple[x509.Certificate, ...]  # leaf first
    ca_certs: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    ocsp_issuer: x509.Certificate | None
    info: CertificateInfo
    chain_verified: bool  # the served chain leads up to a CA in cacertfile
    private_key: object = field(repr=False, compare=False)
    warnings: tuple[str, ...] = field(default=())

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _read(path: str, what: str) -> bytes:
    if not path:
        return b""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path!r}: {exc.strerror or exc}") from None


def _password(policy: TlsPolicy) -> bytes:
    # password_file (first line) wins; EMQX's "file://<path>" form of password works too.
    if policy.password_file:
        lines = _read(policy.password_file, "password_file").splitlines()
        return lines[0] if lines else b""
    if policy.password.startswith("file://"):
        return _read(policy.password[len("file://"):], "password file").rstrip(b"\r\n")
    return policy.password.encode()


def read_snapshot(policy: TlsPolicy) -> Snapshot:
    parts = [
        _read(policy.certfile, "certfile"), _read(policy.keyfile, "keyfile"),
        _read(policy.cacertfile, "cacertfile"), _read(policy.crlfile, "crlfile"),
        _read(policy.ocsp_issuer_pem, "ocsp.issuer_pem"), _password(policy),
        _read(policy.psk_file, "psk_authentication.init_file"),
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return Snapshot(*parts, digest=digest.hexdigest())


def leaf_fingerprint(cert_pem: bytes) -> str | None:
    """SHA-256 of the first certificate in ``cert_pem``, or None when there is none (yet)."""
    match = _PEM_CERT.search(cert_pem)
    if match is None:
        return None
    try:
        return x509.load_pem_x509_certificate(match.group(0)).fingerprint(hashes.SHA256()).hex()
    except ValueError:
        return None


def _load_certs(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise TlsConfigError(f"{what}: no PEM certificate in it (empty, garbage or half-written file?)")
    certs = []
    for number, block in enumerate(blocks, 1):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise TlsConfigError(f"{what}: certificate #{number} does not parse: {exc}") from None
    return tuple(certs)


def _load_key(data: bytes, password: bytes):
    if not data.strip():
        raise TlsConfigError("keyfile: empty")
    try:
        return serialization.load_pem_private_key(data, password or None)
    except TypeError as exc:
        if "not encrypted" in str(exc):
            raise TlsConfigError("keyfile: password is set but the key is not encrypted") from None
        raise TlsConfigError("keyfile: the key is encrypted and no password is set (ssl_options.password)") from None
    except ValueError as exc:
        if password and ("decrypt" in str(exc).lower() or "password" in str(exc).lower()):
            raise TlsConfigError("keyfile: wrong password for the encrypted key") from None
        raise TlsConfigError(f"keyfile: not a usable PEM private key: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise TlsConfigError(f"keyfile: unsupported key type: {exc}") from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def load_crls(data: bytes, what: str = "crlfile") -> tuple[x509.CertificateRevocationList, ...]:
    blocks = _PEM_CRL.findall(data)
    if not blocks:
        raise TlsConfigError(f"{what}: no PEM CRL in it (empty, garbage or half-written file?)")
    crls = []
    for number, block in enumerate(blocks, 1):
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as exc:
            raise TlsConfigError(f"{what}: CRL #{number} does not parse: {exc}") from None
    return tuple(crls)


def validate_snapshot(policy: TlsPolicy, snapshot: Snapshot, now: dt.datetime | None = None) -> Material:
    """Parse and check ``snapshot``; raise ``TlsConfigError`` with the reason when it must not be served."""
    now = now or dt.datetime.now(dt.timezone.utc)
    warnings: list[str] = []
    chain = _load_certs(snapshot.cert_pem, "certfile")
    key = _load_key(snapshot.key_pem, snapshot.password)
    leaf = chain[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TlsConfigError("keyfile does not match the first certificate in certfile (half-updated pair?)")
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise TlsConfigError(f"certfile: certificate not valid now (valid {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} "
                             f"to {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
    if leaf.not_valid_after_utc - now < EXPIRY_WARNING:
        warnings.append(f"certfile: certificate expires soon ({leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
    for number, (cert, issuer) in enumerate(zip(chain, chain[1:]), 1):
        if not _issued_by(cert, issuer):
            raise TlsConfigError(f"certfile: certificate #{number} is not issued by certificate #{number + 1} "
                                 "(the chain must be leaf first, each followed by its issuer)")

    ca_certs: tuple[x509.Certificate, ...] = ()
    chain_verified = False
    if policy.cacertfile:
        ca_certs = _load_certs(snapshot.ca_pem, "cacertfile")
        top = chain[-1]
        chain_verified = any(_spki(top.public_key()) == _spki(ca.public_key()) or _issued_by(top, ca)
                             for ca in ca_certs)
        if not chain_verified:
            # cacertfile lists the CAs of *clients*; a server certificate from another CA is legitimate.
            warnings.append("certfile: the served chain does not lead up to a CA in cacertfile")

    crls: tuple[x509.CertificateRevocationList, ...] = ()
    if policy.crlfile:
        crls = load_crls(snapshot.crl_pem)
        for crl in crls:
            issuer = next((ca for ca in ca_certs if ca.subject == crl.issuer), None)
            if issuer is None:
                raise TlsConfigError(f"crlfile: no CA in cacertfile issued the CRL of {crl.issuer.rfc4514_string()}")
            if not crl.is_signature_valid(issuer.public_key()):
                raise TlsConfigError(f"crlfile: the CRL of {crl.issuer.rfc4514_string()} has a bad signature")
            if crl.next_update_utc is not None and crl.next_update_utc < now:
                warnings.append(f"crlfile: the CRL of {crl.issuer.rfc4514_string()} is stale "
                                f"(next update was {crl.next_update_utc:%Y-%m-%d %H:%M} UTC)")

    ocsp_issuer = None
    if policy.ocsp_stapling:
        issuers = _load_certs(snapshot.ocsp_issuer_pem, "ocsp.issuer_pem")
        ocsp_issuer = issuers[0]
        if not _issued_by(leaf, ocsp_issuer):
            raise TlsConfigError("ocsp.issuer_pem: not the issuer of the certificate in certfile")

    return Material(snapshot=snapshot, chain=chain, ca_certs=ca_certs, crls=crls, ocsp_issuer=ocsp_issuer,
                    info=CertificateInfo.of(leaf), chain_verified=chain_verified, private_key=key,
                    warnings=tuple(warnings))


def is_revoked(cert: x509.Certificate, crls: tuple[x509.CertificateRevocationList, ...]) -> bool | None:
    """True/False when one of ``crls`` is from ``cert``'s issuer, None when none of them is."""
    verdict = None
    for crl in crls:
        if crl.issuer == cert.issuer:
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return True
            verdict = False
    return verdict
