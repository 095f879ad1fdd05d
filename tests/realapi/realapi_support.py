"""Helpers for the tests against the real control plane (tools/controlplane/localcluster.py)."""

from __future__ import annotations

import ipaddress
import sys
import uuid
from functools import partial
from pathlib import Path
from typing import TypeVar

import kubernetes

from tests.support import wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "controlplane"))

import localcluster  # tools/controlplane is not a package; re-exported for the tests

__all__ = ["localcluster"]

CRD_DIR = REPO / "manifests" / "crds"
T = TypeVar("T")


def _not_there_yet(error: BaseException) -> bool:
    """A 404 or 409 from the API server while objects are being created or replaced."""
    return isinstance(error, kubernetes.client.ApiException) and error.status in (404, 409)


# Poll ``check`` until it returns something truthy (``tests.support.wait_until``); the timeout is a safety net
# against hangs, not an assertion on speed.
wait_for = partial(wait_until, timeout=60.0, interval=0.2, ignore=_not_there_yet)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def token_client(server: str, ca_cert: Path, token: str) -> kubernetes.client.ApiClient:
    """An API client that authenticates with a bearer token only (no client certificate)."""
    configuration = kubernetes.client.Configuration()
    configuration.host = server
    configuration.ssl_ca_cert = str(ca_cert)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    configuration.proxy = None
    return kubernetes.client.ApiClient(configuration)


# The running control plane's Pod range; set by the session fixture (one control plane per session).
pod_network: ipaddress.IPv4Network | None = None


def is_test_pod_ip(address: str) -> bool:
    """True when ``address`` lies in the loopback Pod range that this session's kwok hands out."""
    assert pod_network is not None and pod_network.subnet_of(ipaddress.ip_network("127.0.0.0/8"))
    return ipaddress.ip_address(address) in pod_network


def project_crds() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml")) if CRD_DIR.is_dir() else []


def absent(read) -> bool:
    """Whether ``read()`` answers 404 (other API errors are raised)."""
    from kubernetes.client.rest import ApiException

    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False
