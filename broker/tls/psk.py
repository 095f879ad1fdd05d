"""PSK authentication (``psk_authentication``) for the pyOpenSSL backend.

The init file holds EMQX's ``identity:secret`` lines; like EMQX the secret is used as the raw bytes written
there (no hex decoding). stdlib 3.11 has no PSK API and pyOpenSSL has no public one, so the server callback
is installed through the private cffi bindings pyOpenSSL ships (``SSL_CTX_set_psk_server_callback``): that part
lives in ``compat/pyopenssl.py``, which checks the bindings first. Without them a PSK listener refuses to start
and says why; this module imports no pyOpenSSL itself.

The callback only says which key an offered identity would use. Under TLS 1.3 an offered identity can be
dropped and the handshake fall back to certificates, so ``used_psk_identity`` reports an identity only when
the finished handshake really ran on the key: a PSK suite under TLS <= 1.2, a resumed (PSK) session under 1.3.
"""

from __future__ import annotations

from typing import Any

from .errors import TlsConfigError

MAX_IDENTITY = 128
MAX_SECRET = 256


def parse_psk_file(data: bytes, separator: str, what: str = "psk_authentication.init_file") -> dict[bytes, bytes]:
    table: dict[bytes, bytes] = {}
    sep = separator.encode()
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        identity, found, secret = line.partition(sep)
        if not found or not identity or not secret:
            raise TlsConfigError(f"{what} line {number}: expected identity{separator}secret")
        if len(identity) > MAX_IDENTITY or len(secret) > MAX_SECRET:
            raise TlsConfigError(f"{what} line {number}: identity longer than {MAX_IDENTITY} bytes or secret "
                                 f"longer than {MAX_SECRET} bytes")
        table[identity] = secret
    if not table:
        raise TlsConfigError(f"{what}: no identity{separator}secret line in it")
    return table


def used_psk_identity(connection: Any, offered: bytes | None, reused: bool | None) -> str | None:
    """The identity, only if the finished ``SSL.Connection`` handshake was authenticated by that PSK."""
    if offered is None:
        return None
    version = connection.get_protocol_version_name()
    cipher = connection.get_cipher_name() or ""
    if version == "TLSv1.3":
        used = reused is True and connection.get_peer_certificate() is None
    else:
        used = "PSK" in cipher
    return offered.decode("utf-8", "replace") if used else None
