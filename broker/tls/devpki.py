"""A small X.509 toolkit for development and test PKIs (the bundled ``etc/certs`` and test fixtures).

Never used by the serving path: it only issues certificates, keys and CRLs with ``cryptography`` so that the
bundled PKI can be regenerated (``scripts/gen-test-pki.py``) and tests can mint short-lived, expired, revoked
or deep-chained certificates at run time instead of committing them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key(kind: str = "ec"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str, org: str = "Wharf Test") -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


@dataclass
class Issued:
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    # Certificates between this one and the root, nearest first (empty when issued by the root itself).
    chain: list[x509.Certificate] = field(default_factory=list)

    def cert_pem(self, with_chain: bool = False) -> bytes:
        certs = [self.cert] + (self.chain if with_chain else [])
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def key_pem(self, password: bytes | None = None, legacy: bool = False) -> bytes:
        algorithm: serialization.KeySerializationEncryption
        if password is None:
            algorithm = serialization.NoEncryption()
        else:
            algorithm = serialization.BestAvailableEncryption(password)
        fmt = serialization.PrivateFormat.TraditionalOpenSSL if legacy else serialization.PrivateFormat.PKCS8
        return self.key.private_bytes(serialization.Encoding.PEM, fmt, algorithm)

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


class CertificateAuthority:
    """A CA that issues leaf and intermediate certificates and CRLs."""

    def __init__(self, common_name: str = "Wharf Test Root CA", *, days: int = 3650, key_kind: str = "ec",
                 parent: "CertificateAuthority | None" = None, path_length: int | None = None) -> None:
        self.key = new_key(key_kind)
        self.parent = parent
        self._revoked: list[tuple[int, dt.datetime]] = []
        if parent is None:
            now = _now()
            builder = (x509.CertificateBuilder()
                       .subject_name(name(common_name)).issuer_name(name(common_name))
                       .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
                       .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
                       .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                      critical=True)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                      critical=False))
            self.cert = builder.sign(self.key, hashes.SHA256())
            self.chain: list[x509.Certificate] = []
        else:
            issued = parent.issue(common_name, days=days, ca=True, key=self.key, path_length=path_length)
            self.cert = issued.cert
            # Intermediates above this CA, nearest first; the root is never part of a chain.
            self.chain = [] if parent.parent is None else [parent.cert] + parent.chain

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def intermediate(self, common_name: str, **kwargs) -> "CertificateAuthority":
        return CertificateAuthority(common_name, parent=self, **kwargs)

    def issue(self, common_name: str, *, days: float = 3650, server: bool = False, client: bool = False,
              sans: Sequence[str] = (), key=None, key_kind: str = "ec", ca: bool = False,
              path_length: int | None = None, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None, crl_urls: Sequence[str] = (), ocsp_url: str = "",
              eku: list | None = None, subject: x509.Name | None = None) -> Issued:
        key = key or new_key(key_kind)
        now = _now()
        not_before = not_before or now - dt.timedelta(hours=1)
        not_after = not_after or now + dt.timedelta(days=days)
        builder = (x509.CertificateBuilder()
                   .subject_name(subject or name(common_name)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                                  critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        else:
            usages = list(eku) if eku is not None else (
                ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) +
                ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []))
            if usages:
                builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if sans:
            entries: list[x509.GeneralName] = []
            for san in sans:
                try:
                    entries.append(x509.IPAddress(ipaddress.ip_address(san)))
                except ValueError:
                    entries.append(x509.DNSName(san))
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        if crl_urls:
            builder = builder.add_extension(x509.CRLDistributionPoints([
                x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None) for u in crl_urls
            ]), critical=False)
        if ocsp_url:
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        chain = [] if self.parent is None else [self.cert] + self.chain
        return Issued(cert, key, chain)

    def revoke(self, cert: x509.Certificate) -> None:
        self._revoked.append((cert.serial_number, _now() - dt.timedelta(minutes=1)))

    def crl(self, *, next_update_days: float = 7,
            last_update: dt.datetime | None = None) -> x509.CertificateRevocationList:
        last = last_update or _now() - dt.timedelta(minutes=5)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(last).next_update(last + dt.timedelta(days=next_update_days)))
        for serial, when in self._revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
        return builder.sign(self.key, hashes.SHA256())

    def crl_pem(self, **kwargs) -> bytes:
        return self.crl(**kwargs).public_bytes(serialization.Encoding.PEM)
