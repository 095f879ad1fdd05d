"""Safer TLS defaults (security issue #14, item 8) on both TLS backends, checked with ``openssl s_client``:

- TLS 1.2 without configured ``ciphers`` offers forward-secret AEAD suites only: a client that offers only
  static-RSA CBC-SHA1 (``AES128-SHA``) is refused, ECDHE-RSA-AES128-GCM-SHA256 is accepted;
- client-initiated renegotiation (``R`` in s_client) is refused unless ``client_renegotiation = true``.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from wharf_broker.config.model import SslOptions
from wharf_broker.metrics import Registry
from wharf_broker.tls import TlsListenerRuntime

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is missing")


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def s_client(port: int, *args: str, commands: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    if commands:
        proc.stdin.write(commands)
        await asyncio.sleep(2)  # s_client reads its commands line by line; give it time to act on them
    proc.stdin.close()
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(errors="replace")


async def serve(certs, backend: str, **options):
    runtime = TlsListenerRuntime("ssl:defaults", SslOptions(certfile=str(certs / "server.crt"),
                                                            keyfile=str(certs / "server.key"), **options),
                                 registry=Registry(), backend=backend)
    await runtime.start()
    server = await runtime.create_server(Echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
async def test_tls12_default_ciphers_are_forward_secret_aead(certs, backend):
    server, port = await serve(certs, backend)
    try:
        code, out = await s_client(port, "-cipher", "AES128-SHA")
        assert code != 0 and "Cipher is (NONE)" in out, out
        code, out = await s_client(port, "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
        assert code == 0 and "Cipher is ECDHE-RSA-AES128-GCM-SHA256" in out, out
    finally:
        server.close()


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
async def test_client_renegotiation_refused_by_default(certs, backend):
    server, port = await serve(certs, backend)
    try:
        code, out = await s_client(port, commands=b"R\nhello\n")
        assert "RENEGOTIATING" in out and "no renegotiation" in out, out
        assert code != 0
    finally:
        server.close()
    server, port = await serve(certs, backend, client_renegotiation=True)
    try:
        code, out = await s_client(port, commands=b"R\nhello\n")
        assert "RENEGOTIATING" in out and "no renegotiation" not in out and code == 0, out
    finally:
        server.close()
