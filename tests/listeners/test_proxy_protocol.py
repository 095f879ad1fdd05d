"""PROXY protocol v1/v2 in front of tcp and ws listeners: the parser, the trusted balancer networks, in-process
listeners, and a real broker that reports the proxied client address."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import os
import socket
import struct

import pytest

from wharf_broker.app import BrokerApp
from wharf_broker.config.errors import ConfigError
from wharf_broker.config.loader import load_string
from wharf_broker.metrics import REGISTRY
from wharf_broker.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, TrustedPeers, parse_header

V1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 1883\r\n"


def v2(command: int = 1, family: int = 0x11, payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = (ipaddress.IPv4Address("203.0.113.9").packed + ipaddress.IPv4Address("10.0.0.1").packed
                   + struct.pack("!HH", 40000, 1883))
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload


# -- the parser


def test_v1_headers():
    assert parse_header(V1 + b"rest") == (len(V1), ("203.0.113.7", 51234))
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 8083\r\n"
    assert parse_header(line) == (len(line), ("2001:db8::1", 4000))
    assert parse_header(b"PROXY UNKNOWN\r\n") == (15, None)


def test_v2_headers():
    header = v2()
    assert parse_header(header + b"\x10") == (len(header), ("203.0.113.9", 40000))
    six = (ipaddress.IPv6Address("2001:db8::5").packed + ipaddress.IPv6Address("2001:db8::6").packed
           + struct.pack("!HH", 5000, 8883))
    assert parse_header(v2(family=0x21, payload=six)) == (16 + 36, ("2001:db8::5", 5000))
    assert parse_header(v2(command=0, family=0, payload=b"")) == (16, None)  # LOCAL: a health check
    # TLVs after the addresses are skipped.
    with_tlv = v2(payload=v2()[16:] + b"\x04\x00\x01\x00")
    assert parse_header(with_tlv) == (len(with_tlv), ("203.0.113.9", 40000))


@pytest.mark.parametrize("cut", [0, 1, 5, 11, 12, 15, 20])
def test_partial_headers_ask_for_more(cut):
    assert parse_header(v2()[:cut]) is None
    assert parse_header(V1[:min(cut, len(V1) - 1)]) is None


@pytest.mark.parametrize("data", [
    b"\x10\x0c\x00\x04MQTT",  # straight MQTT: no header
    b"GET / HTTP/1.1\r\n",
    b"PROXY TCP4 not-an-ip 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 203.0.113.7 198.51.100.1 70000 2\r\n",
    b"PROXY SCTP 1.2.3.4 1.2.3.4 1 2\r\n",
    b"PROXY TCP4 " + b"1" * 120,
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
    V2_SIGNATURE + b"\x21\x11\xff\xff",  # too long
])
def test_bad_headers(data):
    with pytest.raises(ProxyHeaderError):
        parse_header(data)


def test_not_on_wss_listeners():
    with pytest.raises(ConfigError, match="listeners.wss.a.proxy_protocol: is only supported on tcp, ssl and ws"):
        load_string('listeners.wss.a { bind = ":0", proxy_protocol = true, '
                    'ssl_options { certfile = "/dev/null", keyfile = "/dev/null" } }')


@pytest.mark.parametrize("kind", ["tcp", "ssl", "ws"])
def test_proxy_protocol_needs_trusted_balancers(kind):
    ssl = ', ssl_options { certfile = "/dev/null", keyfile = "/dev/null" }' if kind == "ssl" else ""
    with pytest.raises(ConfigError, match=rf"listeners.{kind}.a.proxy_protocol_trusted_cidrs: must list the load "
                                          r"balancers' addresses"):
        load_string(f'listeners.{kind}.a {{ bind = ":0", proxy_protocol = true {ssl} }}')
    with pytest.raises(ConfigError, match=r"listeners.tcp.a.proxy_protocol_trusted_cidrs\[1\]: 'lb.example' is "
                                          r"not an IP address or network"):
        load_string('listeners.tcp.a { bind = ":0", proxy_protocol = true, '
                    'proxy_protocol_trusted_cidrs = ["10.0.0.0/8", "lb.example"] }')
    config = load_string('listeners.tcp.a { bind = ":0", proxy_protocol = true, '
                         'proxy_protocol_trusted_cidrs = ["192.0.2.10/32", "2001:db8::/64", "10.1.2.3/8"] }')
    assert config.listeners.tcp["a"].proxy_protocol_trusted_cidrs == ["192.0.2.10/32", "2001:db8::/64", "10.1.2.3/8"]
    # The default: no PROXY protocol, nobody trusted.
    assert load_string('listeners.tcp.a { bind = ":0" }').listeners.tcp["a"].proxy_protocol_trusted_cidrs == []


def test_trusted_peers():
    trusted = TrustedPeers(["192.0.2.10/32", "2001:db8::/64", "10.1.2.3/8", "198.51.100.7"])
    assert trusted.admits(("192.0.2.10", 40000))
    assert not trusted.admits(("192.0.2.11", 40000))
    assert trusted.admits(("10.200.0.1", 1))
    assert trusted.admits(("198.51.100.7", 1)) and not trusted.admits(("198.51.100.8", 1))
    assert trusted.admits(("2001:db8::5", 1, 0, 0)) and not trusted.admits(("2001:db8:1::5", 1, 0, 0))
    assert trusted.admits(("::ffff:192.0.2.10", 1, 0, 0))  # a dual-stack socket's view of an IPv4 peer
    assert trusted.admits(("fe80::1%eth0", 1, 0, 2)) is False
    assert not trusted.admits(None) and not trusted.admits("/tmp/socket") and not trusted.admits(("x", 1))
    assert not trusted.open_to_all and TrustedPeers(["::/0"]).open_to_all
    assert not TrustedPeers([])
    with pytest.raises(ValueError):
        TrustedPeers(["192.0.2.300/32"])


# -- in-process listeners


class PeerEcho(asyncio.Protocol):
    """Answers every chunk with the peer address it was told, as JSON."""

    def __init__(self, context) -> None:
        self.context = context

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(json.dumps({"peer": list(self.transport.get_extra_info("peername")[:2]),
                                         "data": data.decode()}).encode())

    def connection_lost(self, exc) -> None:
        pass


class PeerEchoBroker:
    def __init__(self, config) -> None:
        pass

    def protocol_factory(self, context):
        return lambda: PeerEcho(context)

    def clients(self):
        return []

    async def shutdown(self) -> None:
        pass


def refused(listener_id: str) -> float:
    for labels, value in REGISTRY.get("wharf_listener_connections_refused_total").samples():
        if labels == {"listener": listener_id, "reason": "proxy_protocol"}:
            return value
    return 0


def gate_refused(listener_id: str, reason: str) -> float:
    for labels, value in REGISTRY.get("wharf_proxy_protocol_refused_total").samples():
        if labels == {"listener": listener_id, "reason": reason}:
            return value
    return 0


async def proxied_app(kind: str = "tcp", trusted: str = "127.0.0.1/32") -> BrokerApp:
    app = BrokerApp(load_string(f'listeners.{kind}.px {{ bind = "127.0.0.1:0", proxy_protocol = true, '
                                f'proxy_protocol_timeout = 2s, proxy_protocol_trusted_cidrs = ["{trusted}"] }}\n'
                                'dashboard.enable = false'), PeerEchoBroker)
    await app.start()
    return app


async def test_tcp_listener_takes_the_client_address_from_the_header():
    app = await proxied_app()
    try:
        host, port = app.listeners["tcp:px"].bind.rsplit(":", 1)
        for header, expected in ((V1, ["203.0.113.7", 51234]), (v2(), ["203.0.113.9", 40000])):
            reader, writer = await asyncio.open_connection(host, int(port))
            # Header and first bytes in one segment: what follows the header reaches the protocol.
            writer.write(header + b"hello")
            answer = json.loads(await asyncio.wait_for(reader.read(1000), 5))
            assert answer == {"peer": expected, "data": "hello"}
            writer.close()
        # LOCAL (a balancer's health check): the real peer is kept.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(v2(command=0, family=0, payload=b""))
        await writer.drain()
        writer.write(b"hi")
        answer = json.loads(await asyncio.wait_for(reader.read(1000), 5))
        assert answer["peer"][0] == "127.0.0.1"
        writer.close()
    finally:
        await app.stop()


async def test_tcp_listener_drops_connections_without_a_header():
    app = await proxied_app()
    try:
        host, port = app.listeners["tcp:px"].bind.rsplit(":", 1)
        before = refused("tcp:px")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        with _eof_or_reset():
            assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()
        # Silence: dropped once proxy_protocol_timeout has passed.
        reader, writer = await asyncio.open_connection(host, int(port))
        with _eof_or_reset():
            assert await asyncio.wait_for(reader.read(100), 10) == b""
        writer.close()
        assert refused("tcp:px") == before + 2
        assert app.listeners["tcp:px"].context.current_connections == 0
    finally:
        await app.stop()


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_a_direct_client_with_a_forged_header_is_closed(kind, caplog):
    """The balancer is 192.0.2.10; a client on 127.0.0.1 that sends its own header is not believed."""
    app = await proxied_app(kind, trusted="192.0.2.10/32")
    listener_id = f"{kind}:px"
    try:
        host, port = app.listeners[listener_id].bind.rsplit(":", 1)
        before = gate_refused(listener_id, "untrusted_peer")
        with caplog.at_level(logging.WARNING, logger="wharf.listeners"):
            for header in (V1, v2()):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(header + b"hello")
                with _eof_or_reset():
                    assert await asyncio.wait_for(reader.read(1000), 5) == b""  # never echoed: closed
                writer.close()
        assert gate_refused(listener_id, "untrusted_peer") == before + 2
        assert app.listeners[listener_id].context.current_connections == 0
        [line] = [r.getMessage() for r in caplog.records if "proxy_protocol_trusted_cidrs" in r.getMessage()]
        assert line.startswith(f"listener {listener_id}: closed a connection from 127.0.0.1:")  # then rate-limited
    finally:
        await app.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("trusted, believed", [("::1/128", True), ("2001:db8::/64", False), ("127.0.0.1/32", False)])
async def test_ipv6_peers(trusted, believed):
    app = BrokerApp(load_string(f'listeners.tcp.px {{ bind = "[::1]:0", proxy_protocol = true, '
                                f'proxy_protocol_trusted_cidrs = ["{trusted}"] }}\ndashboard.enable = false'),
                    PeerEchoBroker)
    await app.start()
    try:
        port = int(app.listeners["tcp:px"].bind.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("::1", port)
        writer.write(V1 + b"hello")
        if believed:
            assert json.loads(await asyncio.wait_for(reader.read(1000), 5))["peer"] == ["203.0.113.7", 51234]
        else:
            with _eof_or_reset():
                assert await asyncio.wait_for(reader.read(1000), 5) == b""
        writer.close()
    finally:
        await app.stop()


async def test_the_balancer_must_send_a_header():
    """A trusted peer without a header is not taken for a direct client (HAProxy's accept-proxy)."""
    app = await proxied_app()
    try:
        host, port = app.listeners["tcp:px"].bind.rsplit(":", 1)
        before = gate_refused("tcp:px", "bad_header")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        with _eof_or_reset():
            assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()
        assert gate_refused("tcp:px", "bad_header") == before + 1
    finally:
        await app.stop()


async def test_open_to_all_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="wharf.listeners"):
        app = await proxied_app(trusted="0.0.0.0/0")
        await app.stop()
    assert any("holds a /0" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def test_a_listener_without_trusted_balancers_does_not_start():
    """Even a config that skipped the loader's checks: the listener refuses to start."""
    config = load_string('listeners.tcp.px { bind = "127.0.0.1:0" }\ndashboard.enable = false')
    config.listeners.tcp["px"].proxy_protocol = True
    app = BrokerApp(config, PeerEchoBroker)
    with pytest.raises(Exception, match="proxy_protocol_trusted_cidrs"):
        await app.start()
    await app.stop()


class _eof_or_reset:
    """An abort may show as EOF or as a reset, depending on timing."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is not None and issubclass(kind, ConnectionResetError)


async def test_ws_listener_behind_a_proxy_header():
    app = await proxied_app("ws")
    try:
        host, port = app.listeners["ws:px"].bind.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(V1 + (f"GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert response.startswith(b"HTTP/1.1 101")
        payload, mask = b"over-ws", os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        writer.write(bytes([0x82, 0x80 | len(payload)]) + mask + masked)  # one masked binary frame
        first, length = await asyncio.wait_for(reader.readexactly(2), 5)
        assert first == 0x82
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        answer = json.loads(await reader.readexactly(length))
        assert answer == {"peer": ["203.0.113.7", 51234], "data": "over-ws"}
        writer.close()
    finally:
        await app.stop()


# -- a real broker


def test_real_broker_lists_the_proxied_client(broker_process):
    broker = broker_process('listeners.tcp.default { bind = "127.0.0.1:0", proxy_protocol = true,\n'
                            '  proxy_protocol_trusted_cidrs = ["127.0.0.0/8"] }\n'
                            'dashboard.listeners.http.bind = "127.0.0.1:0"\n')
    client_id = b"behind-balancer"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(client_id)) + client_id
    with socket.create_connection(("127.0.0.1", broker.port("tcp:default")), timeout=10) as sock:
        sock.sendall(V1 + bytes([0x10, len(body)]) + body)
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        status, raw = broker.admin("GET", "/api/v5/clients")
        assert status == 200
        [client] = [c for c in json.loads(raw)["data"] if c["clientid"] == client_id.decode()]
        assert "203.0.113.7" in client["peer"]
