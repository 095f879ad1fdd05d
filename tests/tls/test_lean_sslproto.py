"""Many TLS connections share one read buffer per event loop: data must never cross between them."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from wharf_broker.tls.compat.lean_sslproto import LeanSSLProtocol

CERTS = Path(__file__).resolve().parents[2] / "etc" / "certs"


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def test_concurrent_connections_through_the_shared_buffer_keep_their_own_bytes():
    loop = asyncio.get_running_loop()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERTS / "server.crt", CERTS / "server.key")
    protocols = []

    def factory():
        protocol = LeanSSLProtocol(loop, Echo(), server_ctx, None, server_side=True)
        protocols.append(protocol)
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(CERTS / "rootCA.crt"))

    async def exchange(index: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        payload = bytes([index]) * 100_000 + os.urandom(50_000)  # larger than one TLS record, interleaved reads
        writer.write(payload)
        await writer.drain()
        echoed = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        assert echoed == payload
        return echoed

    try:
        await asyncio.wait_for(asyncio.gather(*(exchange(i) for i in range(20))), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert len(protocols) == 20
    # One buffer for all of them, and asyncio's own read size for the plaintext.
    assert len({id(p._ssl_buffer_view.obj) for p in protocols}) == 1
    assert all(p.max_size == 256 * 1024 and len(p._ssl_buffer) == 0 for p in protocols)
