"""Dashboard password hashes: ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (salt and hash base64).

``python -m wharf_broker.dashboard.passwords`` reads a password (twice, without echo) and prints its hash for
``dashboard.default_password_hash``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash_format(encoded: str) -> str | None:
    """None when ``encoded`` is a hash this module can verify, else what is wrong with it."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        return f"must look like {ALGORITHM}$<iterations>$<salt>$<hash>"
    if not parts[1].isdigit() or int(parts[1]) < 1:
        return "the iteration count must be a positive whole number"
    try:
        _unb64(parts[2]), _unb64(parts[3])
    except ValueError:
        return "salt and hash must be base64"
    return None


def verify_password(password: str, encoded: str) -> bool:
    if check_hash_format(encoded) is not None:
        return False
    _, iterations, salt, expected = encoded.split("$")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    return hmac.compare_digest(digest, _unb64(expected))


def main() -> int:
    first = getpass.getpass("Dashboard password: ")
    if not first or first != getpass.getpass("Again: "):
        print("the passwords are empty or differ", file=sys.stderr)
        return 2
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
