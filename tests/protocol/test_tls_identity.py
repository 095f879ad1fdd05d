"""The protocol layer over a real TLS handshake: certificate identities as username / client id, and the TLS
details in the client list. Uses the bundled test PKI and the standard library's TLS."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from wharf_broker.broker import Broker
from wharf_broker.listener_context import ListenerContext
from wharf_broker.listener_slots import counted_factory
from wharf_broker.metrics import Registry
from wharf_broker.mqtt import reason_codes as rc

from tests.support.wire import HOST, WireClient


@pytest.fixture
async def tls_broker(certs):
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certs / "server.crt", certs / "server.key")
    server_context.load_verify_locations(certs / "rootCA.crt")
    server_context.verify_mode = ssl.CERT_OPTIONAL
    broker = Broker(registry=Registry())
    listener = ListenerContext(id="ssl:default", type="ssl", peer_cert_as_username="dn",
                               peer_cert_as_clientid="cn")
    factory = counted_factory(listener, broker.protocol_factory(listener))
    server = await asyncio.get_running_loop().create_server(factory, HOST, 0, ssl=server_context)
    yield broker, server.sockets[0].getsockname()[1]
    server.close()
    await broker.shutdown(timeout=2)
    assert listener.current_connections == 0


async def _tls_client(certs, port: int, with_certificate: bool) -> WireClient:
    context = ssl.create_default_context(cafile=str(certs / "rootCA.crt"))
    if with_certificate:
        context.load_cert_chain(certs / "client.crt", certs / "client.key")
    reader, writer = await asyncio.open_connection(HOST, port, ssl=context, server_hostname="localhost")
    return WireClient(reader, writer, 5)


async def test_certificate_identity_over_tls(tls_broker, certs):
    broker, port = tls_broker
    client = await _tls_client(certs, port, with_certificate=True)
    ack = await client.connect("from-packet", username="from-packet")
    assert ack.reason_code == 0
    [info] = broker.clients()
    assert info["clientid"] == "client"  # the certificate's CN
    assert info["username"] == "CN=client,O=Wharf Test,C=SE"  # its DN
    assert info["tls_version"].startswith("TLSv1.")
    assert info["tls_cipher"]
    assert info["peer_cert_subject"] == "CN=client,O=Wharf Test,C=SE"
    # It is a working MQTT connection.
    await client.subscribe("tls/t", qos=1)
    await client.publish("tls/t", b"secure", qos=0)
    message = await client.recv()
    assert (message.payload, message.qos) == (b"secure", 0)
    await client.disconnect()


async def test_tls_without_certificate_keeps_packet_identity(tls_broker, certs):
    broker, port = tls_broker
    client = await _tls_client(certs, port, with_certificate=False)
    assert (await client.connect("plain-id", username="u")).reason_code == rc.SUCCESS
    [info] = broker.clients()
    assert (info["clientid"], info["username"], info["peer_cert_subject"]) == ("plain-id", "u", None)
    await client.disconnect()
