"""Dashboard password hashes: ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (salt and hash base64).

``python -m wharf_broker.dashboard.passwords`` reads a password (twice, without echo) and prints its hash for
``dashboard.default_password_hash``.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import sys

from ..config.password_hash import ALGORITHM, check_hash_format
from ..config.password_hash import b64 as _b64
from ..config.password_hash import unb64 as _unb64

__all__ = ["ALGORITHM", "ITERATIONS", "check_hash_format", "hash_password", "verify_password"]

ITERATIONS = 600_000


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


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
