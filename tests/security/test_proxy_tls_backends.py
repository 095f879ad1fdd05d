"""The PROXY header ahead of TLS, on both TLS backends of the runtime (stdlib and pyOpenSSL): the header is read
before the handshake, bytes of the ClientHello that arrived with it are not lost, the application sees the
client address from the header, and the client certificate is still verified and visible. A peer outside the
trusted load-balancer networks is closed before its header (and its forged TLS TLV) is read."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from wharf_broker.auth import peer_identity
from wharf_broker.config.model import SslOptions
from wharf_broker.metrics import Registry
from wharf_broker.proxy_protocol import ProxyProtocolGate, TrustedPeers
from wharf_broker.tls import TlsListenerRuntime

from tests.support.wire import proxy_v2_header


class Recorder(asyncio.Protocol):
    seen: list = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        identity = peer_identity(transport)
        Recorder.seen.append((transport.get_extra_info("peername"), identity.cn if identity else None,
                              transport.get_extra_info("proxy_ssl_cn")))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
async def test_proxy_header_before_tls(certs, backend):
    Recorder.seen = []
    options = SslOptions(certfile=str(certs / "server.crt"), keyfile=str(certs / "server.key"),
                         cacertfile=str(certs / "rootCA.crt"), verify="verify_peer", fail_if_no_peer_cert=True)
    runtime = TlsListenerRuntime("ssl:proxied", options, registry=Registry(), backend=backend)
    await runtime.start()
    refused = []

    def pre_tls(tls_factory):
        return lambda: ProxyProtocolGate(tls_factory(), 2.0, "ssl:proxied", TrustedPeers(["127.0.0.1/32"]),
                                         refused.append)
    server = await runtime.create_server(Recorder, "127.0.0.1", 0, pre_tls=pre_tls)
    port = server.sockets[0].getsockname()[1]
    try:
        context = ssl.create_default_context(cafile=str(certs / "rootCA.crt"))
        context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
        # The header and the ClientHello in one write: the gate must hand the rest to TLS.
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(proxy_v2_header("198.51.100.20", 5555, "lb-says") + outgoing.read())
        while True:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the broker closed the connection during the handshake"
            incoming.write(data)
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            finally:
                if outgoing.pending:
                    writer.write(outgoing.read())
        if outgoing.pending:
            writer.write(outgoing.read())
        tls.write(b"ping")
        writer.write(outgoing.read())
        answer = b""
        while b"PING" not in answer:
            incoming.write(await asyncio.wait_for(reader.read(65536), 10))
            try:
                answer += tls.read()
            except ssl.SSLWantReadError:
                pass
        writer.close()
        assert len(Recorder.seen) == 1
        peername, cn, proxy_cn = Recorder.seen[0]
        assert peername == ("198.51.100.20", 5555)
        assert cn  # the broker verified the client certificate itself
        assert proxy_cn == "lb-says"
        assert not refused
    finally:
        server.close()
        await runtime.stop()


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
async def test_untrusted_peer_is_closed_before_its_header_and_tls(certs, backend):
    Recorder.seen = []
    options = SslOptions(certfile=str(certs / "server.crt"), keyfile=str(certs / "server.key"))
    runtime = TlsListenerRuntime("ssl:proxied", options, registry=Registry(), backend=backend)
    await runtime.start()
    refused = []

    def pre_tls(tls_factory):
        # The load balancer is 192.0.2.10; this test connects from 127.0.0.1, like a client that bypasses it.
        return lambda: ProxyProtocolGate(tls_factory(), 2.0, "ssl:proxied", TrustedPeers(["192.0.2.10/32"]),
                                         refused.append)
    server = await runtime.create_server(Recorder, "127.0.0.1", 0, pre_tls=pre_tls)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A forged header claiming a verified client certificate with CN "admin", then a ClientHello.
        writer.write(proxy_v2_header("198.51.100.20", 5555, "admin") + b"\x16\x03\x01\x00\x05hello")
        try:
            assert await asyncio.wait_for(reader.read(65536), 10) == b""  # closed: no ServerHello
        except ConnectionResetError:
            pass
        writer.close()
        assert refused == ["untrusted_peer"]
        assert Recorder.seen == []  # the application never saw the connection, nor the forged identity
    finally:
        server.close()
        await runtime.stop()
