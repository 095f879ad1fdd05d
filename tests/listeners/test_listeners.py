"""Listeners in-process, with a small echo protocol standing in for MQTT: admission limits and their metrics,
``enable = false``, the log line, websocket framing and subprotocols, and TLS through the TLS runtime."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

from wharf_broker.app import BrokerApp, StartupError
from wharf_broker.config.loader import load_string
from wharf_broker.listeners import REFUSED
from wharf_broker.metrics import REGISTRY


CERTS = Path(__file__).resolve().parents[2] / "etc" / "certs"
try:
    from wharf_broker.tls import TlsListenerRuntime  # noqa: F401
    HAVE_TLS = True
except ImportError:
    HAVE_TLS = False
requires_tls = pytest.mark.skipif(not HAVE_TLS, reason="wharf_broker.tls is not available")


class Echo(asyncio.Protocol):
    """Echoes (the listener counts the connection in and out)."""

    def __init__(self, context) -> None:
        self.context = context
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data == b"close":
            self.transport.close()
        else:
            self.transport.write(data)

    def connection_lost(self, exc) -> None:
        pass


class EchoBroker:
    def __init__(self, config) -> None:
        self.shutdown_called = False

    def protocol_factory(self, context):
        return lambda: Echo(context)

    def clients(self):
        return []

    async def shutdown(self) -> None:
        self.shutdown_called = True


def sample(name: str, **labels) -> float:
    for sample_labels, value in REGISTRY.get(name).samples():
        if sample_labels == labels:
            return value
    return 0


def host_port(bind: str) -> tuple[str, int]:
    host, port = bind.rsplit(":", 1)
    return host.strip("[]"), int(port)


async def started(config_text: str) -> BrokerApp:
    app = BrokerApp(load_string(config_text), EchoBroker)
    await app.start()
    return app


async def echo_roundtrip(host: str, port: int, payload: bytes = b"ping", **kwargs) -> tuple:
    reader, writer = await asyncio.open_connection(host, port, **kwargs)
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
    return reader, writer


async def test_max_connections_refuses_and_counts():
    app = await started('listeners.tcp.capped { bind = "127.0.0.1:0", max_connections = 2 }\ndashboard.enable = false')
    try:
        listener = app.listeners["tcp:capped"]
        host, port = host_port(listener.bind)
        refused_before = sample("wharf_listener_connections_refused_total", listener="tcp:capped",
                                reason="max_connections")
        first = await echo_roundtrip(host, port)
        second = await echo_roundtrip(host, port)
        assert sample("wharf_listener_connections", listener="tcp:capped") == 2
        # The third is accepted by the kernel and closed by the listener at once: EOF, no echo.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        assert sample("wharf_listener_connections_refused_total", listener="tcp:capped",
                      reason="max_connections") == refused_before + 1
        assert listener.status()["current_connections"] == 2
        # A slot freed is a slot available again.
        first[1].close()
        await first[1].wait_closed()
        for _ in range(100):
            if listener.context.current_connections == 1:
                break
            await asyncio.sleep(0.02)
        third = await echo_roundtrip(host, port)
        for _, writer in (second, third):
            writer.close()
    finally:
        await app.stop()
    assert app.broker.shutdown_called


async def test_max_conn_rate_refuses_and_counts():
    app = await started('listeners.tcp.rated { bind = "127.0.0.1:0", max_conn_rate = 2 }\ndashboard.enable = false')
    try:
        host, port = host_port(app.listeners["tcp:rated"].bind)
        before = sample("wharf_listener_connections_refused_total", listener="tcp:rated", reason="max_conn_rate")
        outcomes = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"x")
            outcomes.append(await asyncio.wait_for(reader.read(1), 5))
            writer.close()
        # A bucket of two: at least the first two get through, and some of a burst of five are refused.
        assert outcomes[:2] == [b"x", b"x"]
        refused = outcomes.count(b"")
        assert refused >= 1
        after = sample("wharf_listener_connections_refused_total", listener="tcp:rated", reason="max_conn_rate")
        assert after - before == refused
    finally:
        await app.stop()


async def test_disabled_listener_is_not_started(caplog):
    caplog.set_level(logging.INFO, logger="wharf.listeners")
    app = await started("""
        listeners.tcp.on { bind = "127.0.0.1:0" }
        listeners.tcp.off { bind = "127.0.0.1:0", enable = false }
        dashboard.enable = false
    """)
    try:
        assert set(app.listeners) == {"tcp:on"}
        views = {view["id"]: view for view in app.listener_views()}
        assert views["tcp:off"]["enable"] is False and views["tcp:off"]["running"] is False
        assert views["tcp:on"]["running"] is True
        assert "listener tcp:off is disabled" in caplog.text
        assert "listener tcp:off on" not in caplog.text
    finally:
        await app.stop()


async def test_log_line_names_the_real_address(caplog):
    caplog.set_level(logging.INFO, logger="wharf.listeners")
    app = await started('listeners.tcp.logged.bind = "127.0.0.1:0"\ndashboard.enable = false')
    try:
        port = host_port(app.listeners["tcp:logged"].bind)[1]
        assert port != 0
        assert f"listener tcp:logged on 127.0.0.1:{port}" in [
            record.getMessage() for record in caplog.records if record.name == "wharf.listeners"]
    finally:
        await app.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_bind():
    app = await started('listeners.tcp.v6.bind = "[::1]:0"\ndashboard.enable = false')
    try:
        bind = app.listeners["tcp:v6"].bind
        assert bind.startswith("[::1]:")
        _, writer = await echo_roundtrip("::1", host_port(bind)[1])
        writer.close()
    finally:
        await app.stop()


async def test_port_in_use_fails_the_start_and_leaves_nothing_running():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    app = BrokerApp(load_string(f"""
        listeners.tcp.first.bind = "127.0.0.1:0"
        listeners.tcp.second.bind = "127.0.0.1:{taken}"
        dashboard.enable = false
    """), EchoBroker)
    try:
        with pytest.raises(StartupError, match=rf"listener tcp:second cannot bind 127.0.0.1:{taken}"):
            await app.start()
        assert all(not listener.running for listener in app.listeners.values())
        first_port = host_port(app.listeners["tcp:first"].bind)[1]
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", first_port)
    finally:
        blocker.close()


# -- websocket


async def test_websocket_binary_frames_reach_the_protocol():
    app = await started('listeners.ws.default { bind = "127.0.0.1:0", websocket.mqtt_path = "/mqtt" }\n'
                        'dashboard.enable = false')
    try:
        url = f"http://{app.listeners['ws:default'].bind}/mqtt"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, protocols=["mqtt"]) as ws:
                assert ws.protocol == "mqtt"
                await ws.send_bytes(b"\x10\x00payload")
                message = await asyncio.wait_for(ws.receive(), 5)
                assert (message.type, message.data) == (aiohttp.WSMsgType.BINARY, b"\x10\x00payload")
                assert app.listeners["ws:default"].context.current_connections == 1
                # The protocol closing its transport closes the websocket (after flushing).
                await ws.send_bytes(b"close")
                message = await asyncio.wait_for(ws.receive(), 5)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        for _ in range(100):
            if app.listeners["ws:default"].context.current_connections == 0:
                break
            await asyncio.sleep(0.02)
        assert app.listeners["ws:default"].context.current_connections == 0
    finally:
        await app.stop()


async def test_websocket_subprotocol_path_and_text_frames():
    app = await started('listeners.ws.default { bind = "127.0.0.1:0" }\n'
                        'listeners.ws.lenient { bind = "127.0.0.1:0", websocket.fail_if_no_subprotocol = false }\n'
                        'dashboard.enable = false')
    try:
        strict = f"http://{app.listeners['ws:default'].bind}"
        lenient = f"http://{app.listeners['ws:lenient'].bind}"
        async with aiohttp.ClientSession() as session:
            for protocols in ((), ("chat",)):
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await session.ws_connect(strict + "/mqtt", protocols=protocols)
                assert info.value.status == 400
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(strict + "/other", protocols=["mqtt"])
            assert info.value.status == 404
            async with session.ws_connect(strict + "/mqtt", protocols=["mqttv3.1", "mqtt"]) as ws:
                assert ws.protocol == "mqttv3.1"  # the client's first choice that the listener supports
                await ws.send_str("text is not MQTT")
                message = await asyncio.wait_for(ws.receive(), 5)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            async with session.ws_connect(lenient + "/mqtt") as ws:
                await ws.send_bytes(b"ok")
                assert (await asyncio.wait_for(ws.receive(), 5)).data == b"ok"
    finally:
        await app.stop()


async def test_websocket_max_connections():
    app = await started('listeners.ws.capped { bind = "127.0.0.1:0", max_connections = 1 }\ndashboard.enable = false')
    try:
        url = f"http://{app.listeners['ws:capped'].bind}/mqtt"
        before = sample("wharf_listener_connections_refused_total", listener="ws:capped", reason="max_connections")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, protocols=["mqtt"]) as ws:
                await ws.send_bytes(b"x")
                await asyncio.wait_for(ws.receive(), 5)
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await session.ws_connect(url, protocols=["mqtt"])
                assert info.value.status == 503
        assert sample("wharf_listener_connections_refused_total", listener="ws:capped",
                      reason="max_connections") == before + 1
    finally:
        await app.stop()


async def test_websocket_large_writes_are_flow_controlled():
    """Writes beyond the high-water mark pause the protocol and everything still arrives, in order."""
    app = await started('listeners.ws.default { bind = "127.0.0.1:0" }\ndashboard.enable = false')
    try:
        url = f"http://{app.listeners['ws:default'].bind}/mqtt"
        chunk = bytes(range(256)) * 256  # 64 KiB
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, protocols=["mqtt"], max_msg_size=0) as ws:
                for _ in range(8):
                    await ws.send_bytes(chunk)
                received = bytearray()
                while len(received) < 8 * len(chunk):
                    message = await asyncio.wait_for(ws.receive(), 10)
                    assert message.type == aiohttp.WSMsgType.BINARY
                    received += message.data
                assert bytes(received) == chunk * 8
    finally:
        await app.stop()


# -- TLS


def client_context(with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(CERTS / "rootCA.crt"))
    if with_cert:
        context.load_cert_chain(str(CERTS / "client.crt"), str(CERTS / "client.key"))
    return context


TLS_LISTENERS = f"""
listeners.ssl.t {{
  bind = "127.0.0.1:0"
  max_connections = 2
  ssl_options {{
    certfile = "{CERTS}/server.crt", keyfile = "{CERTS}/server.key", cacertfile = "{CERTS}/rootCA.crt"
    verify = verify_peer, fail_if_no_peer_cert = true
  }}
}}
listeners.wss.t {{
  bind = "127.0.0.1:0"
  ssl_options {{ certfile = "{CERTS}/server.crt", keyfile = "{CERTS}/server.key" }}
}}
dashboard.enable = false
"""


@requires_tls
async def test_ssl_listener_handshakes_and_limits():
    app = await started(TLS_LISTENERS)
    try:
        host, port = host_port(app.listeners["ssl:t"].bind)
        open_ones = [await echo_roundtrip(host, port, ssl=client_context(True), server_hostname="localhost")
                     for _ in range(2)]
        before = sample("wharf_listener_connections_refused_total", listener="ssl:t", reason="max_connections")
        # Over the limit, the connection is closed before any TLS handshake.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection(host, port, ssl=client_context(True), server_hostname="localhost")
        assert sample("wharf_listener_connections_refused_total", listener="ssl:t",
                      reason="max_connections") == before + 1
        for _, w in open_ones:
            w.close()
        # fail_if_no_peer_cert = true: no client certificate, no connection.
        for _ in range(100):
            if app.listeners["ssl:t"].context.current_connections == 0:
                break
            await asyncio.sleep(0.02)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await echo_roundtrip(host, port, ssl=client_context(False), server_hostname="localhost")
    finally:
        await app.stop()


@requires_tls
async def test_wss_listener():
    app = await started(TLS_LISTENERS)
    try:
        url = f"https://{app.listeners['wss:t'].bind}/mqtt"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, protocols=["mqtt"], ssl=client_context()) as ws:
                await ws.send_bytes(b"secure")
                assert (await asyncio.wait_for(ws.receive(), 5)).data == b"secure"
        description = app.listeners["wss:t"].describe()
        assert description["tls"]["fingerprint_sha256"]
        assert description["ssl_options"]["keyfile"].endswith("server.key")
    finally:
        await app.stop()


def test_refused_metric_is_registered():
    assert REGISTRY.get("wharf_listener_connections_refused_total") is REFUSED


async def test_websocket_close_while_reading_is_paused():
    """A protocol that paused reading and then closes still gets connection_lost (nothing hangs)."""
    lost = asyncio.Event()

    class PauseThenClose(Echo):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            transport.pause_reading()
            asyncio.get_running_loop().call_soon(transport.close)

        def connection_lost(self, exc) -> None:
            super().connection_lost(exc)
            lost.set()

    class PausingBroker(EchoBroker):
        def protocol_factory(self, context):
            return lambda: PauseThenClose(context)

    app = BrokerApp(load_string('listeners.ws.default.bind = "127.0.0.1:0"\ndashboard.enable = false'),
                    PausingBroker)
    await app.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://{app.listeners['ws:default'].bind}/mqtt",
                                          protocols=["mqtt"]) as ws:
                message = await asyncio.wait_for(ws.receive(), 10)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await asyncio.wait_for(lost.wait(), 10)
        assert app.listeners["ws:default"].context.current_connections == 0
    finally:
        await app.stop()
