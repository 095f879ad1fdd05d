"""Where things live inside a broker pod: the one place the rendered config and the pod template agree on.

Every TLS Secret is mounted as a whole-Secret volume in its own directory (never ``subPath``: subPath mounts
never see a Secret update), so the kubelet's atomic ``..data`` swap replaces certificate and key together.
"""

from __future__ import annotations

CONFIG_DIR = "/etc/wharf/config"
CONFIG_KEY = "wharf.conf"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"

ADMIN_TOKEN_DIR = "/etc/wharf/admin"
ADMIN_TOKEN_KEY = "token"
ADMIN_TOKEN_FILE = f"{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"

PSK_DIR = "/etc/wharf/psk"


def cert_dir(listener: str) -> str:
    """The listener's server Secret (tls.crt, tls.key, maybe ca.crt)."""
    return f"/etc/wharf/certs/{listener}"


def ca_dir(listener: str) -> str:
    """The listener's trusted CA bundle, mounted apart from the server Secret."""
    return f"/etc/wharf/ca/{listener}"


def key_password_dir(listener: str) -> str:
    return f"/etc/wharf/keypass/{listener}"


def volume_name(kind: str, listener: str) -> str:
    # Listener names are at most 15 characters, so these stay far below the 63-character limit.
    return f"{kind}-{listener}"
