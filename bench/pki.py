"""A throw-away PKI for the TLS scenarios: one CA, a server certificate for 127.0.0.1, a client certificate.

Keys are ECDSA P-256 for every broker alike (the cheapest common handshake), certificates are valid for a day.
``rotate_server_certificate`` issues a fresh server key and certificate from the same CA and swaps the files
atomically (write beside, then rename), which is how a Kubernetes Secret update or cert-manager renewal looks
to the broker.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Wharf bench"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, ca_name: x509.Name,
           ca_key: ec.EllipticCurvePrivateKey, *, server: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(ca_name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False),
                              critical=True))
    if server:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def create_pki(directory: Path) -> Pki:
    """Create the CA, server and client material under ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Wharf bench CA")
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    pki = Pki(directory=directory,
              ca_cert=directory / "ca.pem", ca_key=directory / "ca.key",
              server_cert=directory / "server.pem", server_key=directory / "server.key",
              client_cert=directory / "client.pem", client_key=directory / "client.key")
    _write_atomically(pki.ca_key, _key_pem(ca_key))
    _write_atomically(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    rotate_server_certificate(pki)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("bench-client", client_key, ca_name, ca_key, server=False)
    _write_atomically(pki.client_key, _key_pem(client_key))
    _write_atomically(pki.client_cert, client_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return pki


def copy_pki(pki: Pki, directory: Path) -> Pki:
    """The same material in another directory (so that a run can rotate its own server certificate)."""
    directory.mkdir(parents=True, exist_ok=True)
    copied = {}
    for field_name in ("ca_cert", "ca_key", "server_cert", "server_key", "client_cert", "client_key"):
        source: Path = getattr(pki, field_name)
        target = directory / source.name
        _write_atomically(target, source.read_bytes(), source.stat().st_mode & 0o777)
        copied[field_name] = target
    return Pki(directory=directory, **copied)


def rotate_server_certificate(pki: Pki) -> str:
    """Issue a new server key and certificate from the CA, replace the files; return the new fingerprint.

    The key is written first, then the certificate: a reader that picks up the new certificate also finds
    the key that matches it (a broker that loads the pair in between must refuse the mismatch and keep the old).
    """
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue("127.0.0.1", key, ca_cert.subject, ca_key, server=True)
    _write_atomically(pki.server_key, _key_pem(key))
    _write_atomically(pki.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def fingerprint_of_der(der: bytes) -> str:
    """Lowercase hex SHA-256 of a certificate's DER, the form Wharf's admin API uses."""
    return hashlib.sha256(der).hexdigest()


def server_fingerprint(pki: Pki) -> str:
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
