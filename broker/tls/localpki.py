"""The embedded default's own PKI: a local CA, a server and a client certificate, made on the first start.

Only ``wharf-broker`` without ``--config`` calls ``ensure()``; a config with certificate paths of its own never
generates anything. The files live in ``<state dir>/certs`` (``config.loader.state_dir()``: ``$WHARF_HOME``,
else ``$XDG_STATE_HOME/wharf``, else ``~/.local/state/wharf``) and the embedded default names them as
``${WHARF_STATE_DIR}/certs/...``:

- ``rootCA.crt`` the CA clients trust, ``rootCA.key`` its key (it never leaves this directory and no listener
  is configured with it);
- ``server.crt``/``server.key`` for the ssl and wss listeners, with SANs for localhost, 127.0.0.1, ::1 and the
  host name;
- ``client.crt``/``client.key`` a client certificate for mutual TLS.

Contracts:

- Private: the directory is made 0700, every key is written 0600 (the certificates 0644, inside it).
- Atomic: each file is written to a temporary file beside it and renamed into place, a key before its
  certificate, so a crash leaves the previous file or none, never half of one; a pair that does not parse, whose
  key does not match its certificate, or a leaf that was not issued by the current CA is made again. Concurrent
  first starts take an exclusive lock (``certs/.lock``) and the later ones reuse what the first one made.
- Reused on the next start; a part is made again (and logged) only when it is missing, unusable, or expired
  (or expires within ``RENEW_BEFORE``). A new CA means a new server and client certificate too.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..atomic_file import TEMPORARY_PREFIX, write_atomically
from ..config.loader import state_dir

CA_DAYS = 3650
LEAF_DAYS = 397  # what browsers accept for a server certificate; renewed at start when it runs out
RENEW_BEFORE = dt.timedelta(days=7)
LOCAL_SANS = ("localhost", "127.0.0.1", "::1")


class LocalPkiError(Exception):
    """The state directory cannot hold the PKI (not writable, a file that cannot be read)."""


@dataclass
class LocalPki:
    directory: Path
    # What this start made, for the log: (why, what) per part; why is "missing" on a first start.
    generated: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.directory / "rootCA.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "rootCA.key"

    @property
    def server(self) -> tuple[Path, Path]:
        return self.directory / "server.crt", self.directory / "server.key"

    @property
    def client(self) -> tuple[Path, Path]:
        return self.directory / "client.crt", self.directory / "client.key"

    def summary(self) -> str:
        return (f"TLS of the embedded default: trust the CA {self.ca}; client certificate {self.client[0]} "
                f"and key {self.client[1]} for mutual TLS (the CA's key stays in {self.directory})")


def certs_dir() -> Path:
    return state_dir() / "certs"


def ensure(directory: Path | None = None, *, hostname: str | None = None) -> LocalPki:
    """The PKI in ``directory`` (default ``certs_dir()``), made or completed as needed (see the module doc)."""
    pki = LocalPki(directory or certs_dir())
    try:
        # A state directory made here is private too; an existing one ($WHARF_HOME) is left as it is.
        pki.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pki.directory.mkdir(mode=0o700, exist_ok=True)
        if pki.directory.stat().st_uid == os.getuid():
            pki.directory.chmod(0o700)
        with _Lock(pki.directory / ".lock"):
            _clean_temporaries(pki.directory)
            _complete(pki, hostname if hostname is not None else socket.gethostname())
    except OSError as exc:
        raise LocalPkiError(f"cannot keep the embedded default's certificates in {pki.directory}: "
                            f"{exc.strerror or exc}; set WHARF_HOME to a writable directory, or run with "
                            "--config and certificates of your own") from exc
    return pki


# ---------------------------------------------------------------------------------------------------------------


def _complete(pki: LocalPki, hostname: str) -> None:
    ca = _load_pair(pki.ca, pki.ca_key)
    problem = _ca_problem(ca)
    if problem:
        ca_key = _new_key()
        ca_cert = _build_ca(ca_key, hostname)
        _write_pair(pki.ca, pki.ca_key, ca_cert, ca_key)
        pki.generated.append((problem, f"generated a local CA {pki.ca} ({problem}): clients must trust this file"))
        ca = ca_cert, ca_key
    ca_cert, ca_key = ca
    for (cert_path, key_path), role in ((pki.server, "server"), (pki.client, "client")):
        problem = _leaf_problem(_load_pair(cert_path, key_path), ca_cert)
        if problem:
            key = _new_key()
            cert = _build_leaf(ca_cert, ca_key, key, role, hostname)
            _write_pair(cert_path, key_path, cert, key)
            pki.generated.append((problem, f"generated a {role} certificate {cert_path} ({problem})"))


def _load_pair(cert_path: Path, key_path: Path):
    """(certificate, key), or a string saying why there is no usable pair. PermissionError propagates."""
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError:
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return "unreadable"
    if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
        return "the key does not match the certificate"
    return cert, key


def _expiry_problem(cert: x509.Certificate) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return f"expired or expiring on {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now:
        return "not valid yet"
    return ""


def _ca_problem(pair) -> str:
    if isinstance(pair, str):
        return pair
    return _expiry_problem(pair[0])


def _leaf_problem(pair, ca_cert: x509.Certificate) -> str:
    if isinstance(pair, str):
        return pair
    cert = pair[0]
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the current CA"
    return _expiry_problem(cert)


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Wharf (generated on first start)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _host_label(hostname: str) -> str | None:
    """The host name if it can be a DNS SAN (ASCII letters, digits, dots and dashes), else None."""
    if hostname and len(hostname) < 254 and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", hostname):
        return hostname
    return None


def _build_ca(key, hostname: str) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    label = _host_label(hostname)
    subject = _name(f"Wharf local CA {label or ''} {now:%Y-%m-%d %H:%M:%S}".replace("  ", " "))
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def _build_leaf(ca_cert: x509.Certificate, ca_key, key, role: str, hostname: str) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    # The CA's validity bounds its leaves.
    not_after = min(now + dt.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name("localhost" if role == "server" else "wharf-client"))
               .issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if role == "server":
        names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                         x509.IPAddress(ipaddress.ip_address("::1"))]
        label = _host_label(hostname)
        if label and label.lower() != "localhost":
            names.append(x509.DNSName(label))
        builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key) -> None:
    """Key first, then certificate, each replaced atomically: a crash in between leaves a pair that does not match
    (made again on the next start), never a half-written file."""
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomically(key_path, key_pem, 0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _clean_temporaries(directory: Path) -> None:
    """Temporary files a crashed start left behind (only ever removed under the lock)."""
    for leftover in directory.glob(TEMPORARY_PREFIX + "*"):
        try:
            leftover.unlink()
        except FileNotFoundError:
            pass


class _Lock:
    """An exclusive ``flock`` on a file, held while the PKI is checked and completed (no-op without fcntl, or
    where the lock file cannot be made: a read-only directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_Lock":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            # A read-only state directory (a mounted volume) still serves a complete PKI; making one fails anyway.
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
