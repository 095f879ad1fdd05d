"""Where things live inside a broker pod: the one place the rendered config and the pod template agree on.

Every TLS Secret is mounted as a whole-Secret volume in its own directory (never ``subPath``: subPath mounts
never see a Secret update), so the kubelet's atomic ``..data`` swap replaces certificate and key together.
``root`` is /etc/wharf in pods; tests render with a temporary directory holding real files.
"""

from __future__ import annotations

ROOT = "/etc/wharf"
CONFIG_KEY = "wharf.conf"
ADMIN_TOKEN_KEY = "token"


def config_dir(root: str = ROOT) -> str:
    return f"{root}/config"


def config_file(root: str = ROOT) -> str:
    return f"{config_dir(root)}/{CONFIG_KEY}"


def admin_token_dir(root: str = ROOT) -> str:
    return f"{root}/admin"


def admin_token_file(root: str = ROOT) -> str:
    return f"{admin_token_dir(root)}/{ADMIN_TOKEN_KEY}"


def psk_dir(root: str = ROOT) -> str:
    return f"{root}/psk"


def users_dir(root: str = ROOT) -> str:
    """The password file's Secret (authentication.passwordFile), mounted whole so edits reach the broker."""
    return f"{root}/users"


def acl_dir(root: str = ROOT) -> str:
    """The ACL's ConfigMap or Secret (authorization.aclRef), mounted whole so edits reach the broker."""
    return f"{root}/acl"


def nats_tls_dir(root: str = ROOT) -> str:
    """The brokers' client certificate for NATS (spec.cluster.nats.tls.clientSecretName)."""
    return f"{root}/nats/tls"


def nats_credentials_dir(root: str = ROOT) -> str:
    """The NATS credentials file's Secret (spec.cluster.nats.credentialsSecretRef)."""
    return f"{root}/nats/creds"


def cert_dir(listener: str, root: str = ROOT) -> str:
    """The listener's server Secret (tls.crt, tls.key, maybe ca.crt)."""
    return f"{root}/certs/{listener}"


def ca_dir(listener: str, root: str = ROOT) -> str:
    """The listener's trusted CA bundle, mounted apart from the server Secret."""
    return f"{root}/ca/{listener}"


def issuer_ca_dir(listener: str, root: str = ROOT) -> str:
    """The CA bundle the listener's served certificate must chain to (tls.trustedIssuerCARef): the pinned trust
    anchor, mounted apart from the server Secret, whose ca.crt the issuer writes itself."""
    return f"{root}/issuer-ca/{listener}"


def key_password_dir(listener: str, root: str = ROOT) -> str:
    return f"{root}/keypass/{listener}"


def volume_name(kind: str, listener: str) -> str:
    # Listener names are at most 15 characters, so these stay far below the 63-character limit.
    return f"{kind}-{listener}"


DATA_VOLUME = "data"


def data_dir() -> str:
    """The broker's durable state: the pod's PersistentVolumeClaim (spec.durableStorage), never under ``root``."""
    return "/var/lib/wharf"
