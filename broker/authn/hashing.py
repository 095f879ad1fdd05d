"""Password hashes for the user file: salted and slow, never plain text.

Formats understood:

- ``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`` (made by ``python -m wharf_broker.authn.passwd``);
- ``pbkdf2_sha512$<iterations>$<salt b64>$<hash b64>``;
- bcrypt (``$2b$...``), when the optional ``bcrypt`` package is installed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

DEFAULT_ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
_PBKDF2 = {"pbkdf2_sha256": "sha256", "pbkdf2_sha512": "sha512"}


class HashFormatError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: bytes, algorithm: str = DEFAULT_ALGORITHM, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    if algorithm not in _PBKDF2:
        raise HashFormatError(f"unknown algorithm {algorithm!r} (choose {', '.join(_PBKDF2)})")
    if iterations < 1:
        raise HashFormatError("the iteration count must be positive")
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac(_PBKDF2[algorithm], password, salt, iterations)
    return f"{algorithm}${iterations}${_b64(salt)}${_b64(digest)}"


def check_format(encoded: str) -> None:
    """Raise ``HashFormatError`` unless ``encoded`` is a hash this module can verify."""
    if encoded.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            import bcrypt  # noqa: F401 - optional
        except ImportError:
            raise HashFormatError("bcrypt hashes need the 'bcrypt' package") from None
        return
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] not in _PBKDF2:
        raise HashFormatError("must look like pbkdf2_sha256$<iterations>$<salt>$<hash> or be a bcrypt hash")
    if not parts[1].isdigit() or int(parts[1]) < 1:
        raise HashFormatError("the iteration count must be a positive whole number")
    try:
        _unb64(parts[2])
        _unb64(parts[3])
    except ValueError:
        raise HashFormatError("salt and hash must be base64") from None


def verify_password(password: bytes, encoded: str) -> bool:
    """Constant-time check of ``password`` against a hash already accepted by ``check_format``. Slow on
    purpose: call it off the event loop."""
    if encoded.startswith("$2"):
        import bcrypt
        return bcrypt.checkpw(password, encoded.encode())
    algorithm, iterations, salt, expected = encoded.split("$")
    digest = hashlib.pbkdf2_hmac(_PBKDF2[algorithm], password, _unb64(salt), int(iterations))
    return hmac.compare_digest(digest, _unb64(expected))
