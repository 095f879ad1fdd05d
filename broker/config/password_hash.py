"""The format of ``dashboard.default_password_hash``: ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (salt and hash
base64 without padding).

Here rather than in ``dashboard/passwords.py`` (which hashes and verifies) so that the config loader can check the
value without importing the Dashboard: configuration sits below everything else (docs/architecture.md, "Checks").
"""

from __future__ import annotations

import base64

ALGORITHM = "pbkdf2_sha256"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def check_hash_format(encoded: str) -> str | None:
    """None when ``encoded`` is a hash this module can verify, else what is wrong with it."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        return f"must look like {ALGORITHM}$<iterations>$<salt>$<hash>"
    if not parts[1].isdigit() or int(parts[1]) < 1:
        return "the iteration count must be a positive whole number"
    try:
        unb64(parts[2]), unb64(parts[3])
    except ValueError:
        return "salt and hash must be base64"
    return None
