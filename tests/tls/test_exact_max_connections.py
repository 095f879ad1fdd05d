"""``max_connections`` is exact on ssl listeners, on both TLS backends: a burst of connections that hold their
TLS handshake open takes exactly the limit's slots, the rest are refused and counted, and every slot comes back
when handshakes fail or time out (the MQTT protocol never hearing of those connections)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from wharf_broker.app import BrokerApp
from wharf_broker.config.loader import load_string
from wharf_broker.metrics import REGISTRY

from tests.support import eventually

CERTS = Path(__file__).resolve().parents[2] / "etc" / "certs"
LIMIT = 4
EXTRA = 3


class Echo(asyncio.Protocol):
    made = 0  # connections the application protocol heard of

    def connection_made(self, transport) -> None:
        Echo.made += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc) -> None:
        pass


class EchoBroker:
    def __init__(self, config) -> None:
        pass

    def protocol_factory(self, context):
        return Echo

    def clients(self):
        return []

    async def shutdown(self, timeout: float = 0) -> None:
        pass


def config(psk_file: Path | None, proxy: bool) -> str:
    psk = f'psk_authentication {{ enable = true, init_file = "{psk_file}" }}' if psk_file else ""
    proxy_options = ('proxy_protocol = true, proxy_protocol_timeout = 30s, proxy_protocol_trusted_cidrs = ["127.0.0.1"]'
                     if proxy else "")
    return f"""
listeners.ssl.t {{
  bind = "127.0.0.1:0"
  max_connections = {LIMIT}
  {proxy_options}
  ssl_options {{
    certfile = "{CERTS}/server.crt", keyfile = "{CERTS}/server.key"
    handshake_timeout = 3s
  }}
}}
{psk}
dashboard.enable = false
"""


def sample(name: str, **labels) -> float:
    for sample_labels, value in REGISTRY.get(name).samples():
        if sample_labels == labels:
            return value
    return 0





async def echo_over_tls(port: int, header: bytes = b"") -> None:
    context = ssl.create_default_context(cafile=str(CERTS / "rootCA.crt"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if header:
        writer.write(header)
    await writer.start_tls(context, server_hostname="localhost")
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    writer.close()


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
@pytest.mark.parametrize("proxy", [False, True], ids=["direct", "proxy_protocol"])
async def test_a_burst_of_open_handshakes_takes_exactly_the_limit(backend, proxy, tmp_path):
    psk_file = None
    if backend == "pyopenssl":  # PSK needs the pyOpenSSL backend, so it is chosen
        psk_file = tmp_path / "init.psk"
        psk_file.write_bytes(b"device:secret\n")
    app = BrokerApp(load_string(config(psk_file, proxy)), EchoBroker)
    await app.start()
    try:
        listener = app.listeners["ssl:t"]
        assert listener.tls_status()["backend"] == backend
        port = int(listener.bind.rsplit(":", 1)[1])
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1883\r\n" if proxy else b""
        accepted = lambda: sample("wharf_listener_connections_accepted_total", listener="ssl:t")  # noqa: E731
        refused = lambda: sample("wharf_listener_connections_refused_total", listener="ssl:t",  # noqa: E731
                                 reason="max_connections")
        accepted_before, refused_before = accepted(), refused()
        Echo.made = 0

        # N + k connections at once, none of them starting its TLS handshake.
        burst = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(LIMIT + EXTRA)))
        for _, writer in burst:
            if header:
                writer.write(header)
        assert await eventually(lambda: accepted() - accepted_before + refused() - refused_before == LIMIT + EXTRA,
                                timeout=30.0, interval=0.02)
        assert accepted() - accepted_before == LIMIT
        assert refused() - refused_before == EXTRA
        assert listener.context.current_connections == LIMIT
        assert sample("wharf_listener_connections", listener="ssl:t") == LIMIT
        # The refused ones are closed before any handshake; the others wait in theirs.
        ends = await asyncio.gather(*(asyncio.wait_for(reader.read(1), 10) for reader, _ in burst),
                                    return_exceptions=True)
        assert Echo.made == 0
        # (a closed one reads EOF at once; a held one is closed by the handshake timeout: EOF too, later)
        assert all(end == b"" or isinstance(end, ConnectionError) for end in ends), ends

        # Handshakes that fail (garbage) or time out give every slot back.
        assert await eventually(lambda: listener.context.current_connections == 0, timeout=30.0, interval=0.02)
        assert sample("wharf_listener_connections", listener="ssl:t") == 0
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(header + b"\x16\x03\x01\x00\x05garbage-that-is-no-client-hello")
            assert b"ping" not in await asyncio.wait_for(reader.read(100), 10)  # an alert at most, then EOF
            writer.close()
        assert await eventually(lambda: listener.context.current_connections == 0, timeout=30.0, interval=0.02)
        assert Echo.made == 0

        # The slots are usable again: the limit's worth of real TLS clients at once, then none left over.
        await asyncio.gather(*(echo_over_tls(port, header) for _ in range(LIMIT)))
        assert Echo.made == LIMIT
        assert await eventually(lambda: listener.context.current_connections == 0, timeout=30.0, interval=0.02)
        assert sample("wharf_listener_connections", listener="ssl:t") == 0
        for _, writer in burst:
            writer.close()
    finally:
        await app.stop()
