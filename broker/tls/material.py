"""Certificate material: read the files once (a snapshot), then validate exactly those bytes.

A reload never loads a file twice: ``read_snapshot`` reads certfile, keyfile, cacertfile, server_cacertfile,
crlfile (and the OCSP issuer) into memory and hashes their *contents* (a Kubernetes ``..data`` symlink flip,
``cp -p`` or an unchanged mtime are all seen); ``validate_snapshot`` parses and checks them (the served chain
with the checks the operator runs too, ``validation.py``) and returns ``Material``, from which the TLS contexts
are built. Runs in a worker thread: key decryption can be slow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .errors import TlsConfigError
from .options import TlsPolicy
from .validation import MaterialRefused, check_server_material, issued_by, leads_to, load_certs

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
    server_ca_pem: bytes
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
        raise TlsConfigError(f"{what} {path!r}: {exc.strerror or exc}", "Unreadable") from None


def _read_optional(path: str) -> bytes:
    """A file that may be absent (server_cacertfile from a Secret without ca.crt): its bytes, or none."""
    try:
        return _read(path, "server_cacertfile")
    except TlsConfigError:
        if Path(path).exists():
            raise
        return b""


def _password(policy: TlsPolicy) -> bytes:
    # password_file (first line) wins; EMQX's "file://<path>" form of password works too.
    if policy.password_file:
        lines = _read(policy.password_file, "password_file").splitlines()
        return lines[0] if lines else b""
    if policy.password.startswith("file://"):
        return _read(policy.password[len("file://"):], "password file").rstrip(b"\r\n")
    return policy.password.encode()


def read_snapshot(policy: TlsPolicy) -> Snapshot:
    return _snapshot([
        _read(policy.certfile, "certfile"), _read(policy.keyfile, "keyfile"),
        _read(policy.cacertfile, "cacertfile"), _read(policy.crlfile, "crlfile"),
        _read(policy.ocsp_issuer_pem, "ocsp.issuer_pem"), _password(policy),
        _read(policy.psk_file, "psk_authentication.init_file"), _read_optional(policy.server_cacertfile),
    ])


def snapshot_with(policy: TlsPolicy, cert_pem: bytes, key_pem: bytes, server_ca_pem: bytes) -> Snapshot:
    """A snapshot of the files with the served chain, key and server CAs taken from elsewhere (the last accepted
    material, ``accepted.py``) instead of certfile, keyfile and server_cacertfile."""
    return _snapshot([
        cert_pem, key_pem, _read(policy.cacertfile, "cacertfile"), _read(policy.crlfile, "crlfile"),
        _read(policy.ocsp_issuer_pem, "ocsp.issuer_pem"), _password(policy),
        _read(policy.psk_file, "psk_authentication.init_file"), server_ca_pem,
    ])


def _snapshot(parts: list[bytes]) -> Snapshot:
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
    try:
        return load_certs(data, what)
    except MaterialRefused as exc:
        raise TlsConfigError(exc.message, exc.reason) from None


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
    # The served chain: the same checks as the operator's (validation.py). With server_cacertfile set, the chain
    # must lead to it or to cacertfile, as the operator checks the Secret's ca.crt and the listener's CA bundle.
    anchors_pem = b""
    if policy.server_cacertfile:
        anchors_pem = b"\n".join(p.strip() for p in (snapshot.server_ca_pem, snapshot.ca_pem) if p.strip())
    try:
        checked = check_server_material(snapshot.cert_pem, snapshot.key_pem, anchors_pem, snapshot.password, now,
                                        names=("certfile", "keyfile", "server_cacertfile or cacertfile"))
    except MaterialRefused as exc:
        raise TlsConfigError(exc.message, exc.reason) from None
    chain, key, leaf = checked.chain, checked.private_key, checked.leaf
    if leaf.not_valid_after_utc - now < EXPIRY_WARNING:
        warnings.append(f"certfile: certificate expires soon ({leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")

    ca_certs: tuple[x509.Certificate, ...] = ()
    chain_verified = checked.chain_checked
    if policy.cacertfile:
        ca_certs = _load_certs(snapshot.ca_pem, "cacertfile")
        chain_verified = chain_verified or leads_to(chain, ca_certs)
        if not chain_verified:
            # cacertfile lists the CAs of *clients*; a server certificate from another CA is legitimate unless
            # server_cacertfile says which CAs issue it.
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
        if not issued_by(leaf, ocsp_issuer):
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
