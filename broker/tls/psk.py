"""PSK authentication (``psk_authentication``) for the pyOpenSSL backend.

The init file holds EMQX's ``identity:secret`` lines; like EMQX the secret is used as the raw bytes written
there (no hex decoding). stdlib 3.11 has no PSK API and pyOpenSSL has no public one, so the server callback
is installed through the cffi bindings pyOpenSSL ships (``SSL_CTX_set_psk_server_callback``).

The callback only says which key an offered identity would use. Under TLS 1.3 an offered identity can be
dropped and the handshake fall back to certificates, so ``used_psk_identity`` reports an identity only when
the finished handshake really ran on the key: a PSK suite under TLS <= 1.2, a resumed (PSK) session under 1.3.
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

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


@ffi.callback("unsigned int(SSL *, const char *, unsigned char *, unsigned int)")
def _server_callback(ssl_pointer, identity_pointer, psk_out, max_len):
    # Runs inside OpenSSL: never raise; 0 = unknown identity (handshake fails with unknown_psk_identity).
    try:
        connection = SSL.Connection._reverse_mapping.get(ssl_pointer)
        bridge = connection.get_app_data() if connection is not None else None
        if bridge is None or identity_pointer == ffi.NULL:
            return 0
        identity = ffi.string(identity_pointer)
        secret = bridge.psk_table.get(identity)
        if secret is None or len(secret) > max_len:
            return 0
        ffi.memmove(psk_out, secret, len(secret))
        bridge.psk_offered = identity
        return len(secret)
    except Exception:  # noqa: BLE001 - an exception must not cross into C
        return 0


def enable_psk(ctx: SSL.Context, hint: bytes = b"wharf") -> None:
    lib.SSL_CTX_set_psk_server_callback(ctx._context, _server_callback)
    if lib.SSL_CTX_use_psk_identity_hint(ctx._context, hint) != 1:
        raise TlsConfigError("OpenSSL refused the PSK identity hint")


def used_psk_identity(connection: SSL.Connection, offered: bytes | None) -> str | None:
    """The identity, only if the finished handshake was authenticated by that PSK."""
    if offered is None:
        return None
    version = connection.get_protocol_version_name()
    cipher = connection.get_cipher_name() or ""
    if version == "TLSv1.3":
        used = lib.SSL_session_reused(connection._ssl) == 1 and connection.get_peer_certificate() is None
    else:
        used = "PSK" in cipher
    return offered.decode("utf-8", "replace") if used else None
