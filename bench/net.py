"""Loopback helpers: free ports, waiting for a listener, TLS client contexts for the PKI."""

from __future__ import annotations

import socket
import ssl
import time

from bench.pki import Pki

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for brokers that cannot report an ephemeral port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, deadline: float, alive=lambda: True) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port, or raise TimeoutError."""
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process died before listening on {HOST}:{port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port}")


def client_tls_context(pki: Pki, *, mutual: bool) -> ssl.SSLContext:
    """A TLS 1.3-only client context trusting the bench CA, with the client certificate when ``mutual``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if mutual:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx
