"""Certificates for the operator tests, made with ``cryptography`` as cert-manager would issue them."""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Wharf Test CA", issuer: Issued | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(issuer.cert.subject if issuer else _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True))
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def make_leaf(ca: Issued, cn: str = "broker.wharf.svc", *, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, sans: list[str] | None = None,
              client: bool = False) -> Issued:
    """A server certificate, or with ``client`` a device's (clientAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    names = sans or [cn, "localhost"]
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - datetime.timedelta(hours=1))
               .not_valid_after(not_after or NOW + datetime.timedelta(days=90))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def tls_secret(name: str, namespace: str, leaf: Issued, ca: Issued | None = None, *, chain: bytes = b"",
               key_pem: bytes | None = None) -> dict:
    """A kubernetes.io/tls Secret as cert-manager writes it."""
    data = {"tls.crt": leaf.cert_pem + chain, "tls.key": key_pem if key_pem is not None else leaf.key_pem()}
    if ca is not None:
        data["ca.crt"] = ca.cert_pem
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "1"},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def secret_data(leaf: Issued, ca: Issued | None = None) -> dict:
    data = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem()}
    if ca is not None:
        data["ca.crt"] = ca.cert_pem
    return {k: base64.b64encode(v).decode() for k, v in data.items()}
