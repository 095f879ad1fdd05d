"""Every protocol limit is enforced and counted (``wharf_limit_exceeded_total{limit}``), on a real broker
process with small limits; listener admission limits are counted in ``..._refused_total{reason}``."""

from __future__ import annotations

import asyncio

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT, Publish

from .conftest import metric
from tests.support.wire import WireClient


async def closed_with(client: WireClient) -> list:
    packets = []
    try:
        while True:
            packets.append(await client.recv(timeout=10))
    except (EOFError, ConnectionError):
        return packets


async def test_limits_enforced_and_counted(broker_process):
    broker = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0", max_conn_rate = 1000 }
listeners.tcp.capped { bind = "127.0.0.1:0", max_connections = 1 }
dashboard.listeners.http.bind = "127.0.0.1:0"
mqtt { max_packet_size = 1KB, max_clientid_len = 23, max_topic_levels = 3, max_subscriptions = 2,
       idle_timeout = 1s, max_awaiting_rel = 1 }
""")
    port = broker.port("tcp:default")

    client = await WireClient.open(port)
    assert (await client.connect("x" * 24)).reason_code == rc.CLIENT_IDENTIFIER_NOT_VALID

    client = await WireClient.open(port)
    await client.connect("big")
    await client.send(Publish("t", b"x" * 2048, 0, False, False, None, None))
    packets = await closed_with(client)
    assert packets and packets[0].type == DISCONNECT and packets[0].reason_code == rc.PACKET_TOO_LARGE

    client = await WireClient.open(port)
    await client.connect("levels")
    assert (await client.subscribe("a/b/c/d", qos=1)).reason_codes == [rc.TOPIC_FILTER_INVALID]
    assert (await client.subscribe("a", "b", "c", qos=1)).reason_codes == [1, 1, rc.QUOTA_EXCEEDED]
    await client.send(Publish("a/b/c/d", b"x", 0, False, False, None, None))
    packets = await closed_with(client)
    assert packets[0].type == DISCONNECT and packets[0].reason_code == rc.TOPIC_NAME_INVALID

    client = await WireClient.open(port)
    await client.connect("qos2")
    await client.send(Publish("q", b"1", 2, False, False, 1, None))
    await client.send(Publish("q", b"2", 2, False, False, 2, None))
    packets = await closed_with(client)
    assert packets[-1].type == DISCONNECT and packets[-1].reason_code == rc.RECEIVE_MAXIMUM_EXCEEDED

    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # never sends CONNECT
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()

    capped = broker.port("tcp:capped")
    first = await WireClient.open(capped)
    assert (await first.connect("first")).reason_code == 0
    reader, writer = await asyncio.open_connection("127.0.0.1", capped)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await first.close()

    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    for limit in ("max_clientid_len", "max_packet_size", "max_subscriptions", "idle_timeout",
                  "max_awaiting_rel"):
        assert metric(text, "wharf_limit_exceeded_total", limit=limit) == 1, limit
    assert metric(text, "wharf_limit_exceeded_total", limit="max_topic_levels") == 2
    assert metric(text, "wharf_listener_connections_refused_total", listener="tcp:capped",
                  reason="max_connections") == 1


# ------------------------------------------------------------------------ 5.0 property caps (issue #14, item 6)

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _str(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


def user_props(count: int) -> bytes:
    return b"\x26\x00\x00\x00\x00" * count  # empty key, empty value


def connect_v5(client_id: str, props: bytes = b"") -> bytes:
    return _packet(0x10, _str("MQTT") + b"\x05\x02\x00\x3c" + _varint(len(props)) + props + _str(client_id))


def publish_v5(topic: str, payload: bytes, props: bytes = b"", qos: int = 0, packet_id: int = 1) -> bytes:
    body = _str(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + _varint(len(props)) + props
    return _packet(0x30 | qos << 1, body + payload)


async def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` and read until the broker closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass
    received = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            received += chunk
    except ConnectionError:
        pass
    writer.close()
    return received


async def test_property_floods_are_cut_while_decoding_and_counted(broker_process):
    broker = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0" }
dashboard.listeners.http.bind = "127.0.0.1:0"
""")
    port = broker.port("tcp:default")
    # The attack: a ~1 MB CONNECT of 200,000 empty user properties. Before CONNACK only
    # mqtt.connect_max_packet_size (64KB) applies: refused on its fixed header, nothing of it parsed.
    assert await raw_exchange(port, connect_v5("flood", user_props(200_000))) == b""
    # Under 64KB but with a property block over connect_max_properties_size (8KB): refused by its length.
    answer = await raw_exchange(port, connect_v5("block", user_props(2000)))
    assert answer[:1] == b"\x20" and answer[3] == rc.PACKET_TOO_LARGE
    # A small block with more than connect_max_user_properties (32): CONNACK 0x95.
    answer = await raw_exchange(port, connect_v5("count", user_props(33)))
    assert answer[:1] == b"\x20" and answer[3] == rc.PACKET_TOO_LARGE
    ok = await WireClient.open(port)
    assert (await ok.connect("fine", properties={"user_property": [("k", "v")] * 32})).reason_code == 0
    await ok.close()

    # After CONNACK: the normal limits (max_user_properties 128, max_properties_size 64KB).
    subscriber = await WireClient.open(port)
    await subscriber.connect("sub")
    await subscriber.subscribe("props/#", qos=0)
    # What the client sent right behind its CONNECT (before the CONNACK) is parsed under the normal limits.
    big = b"y" * 100_000
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_v5("pipelined") + publish_v5("props/big", big, user_props(128)))
    delivered = await subscriber.recv()
    assert delivered.topic == "props/big" and delivered.payload == big
    assert len(delivered.properties["user_property"]) == 128
    writer.close()
    for name, props, limit in (("many", user_props(129), "max_user_properties"),
                               ("flood", user_props(200_000), "max_properties_size")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_v5(name))
        head = await reader.readexactly(2)
        assert head[0] == 0x20 and (await reader.readexactly(head[1]))[1] == 0  # CONNACK accepted (short)
        writer.write(publish_v5("props/x", b"x", props))
        data = await asyncio.wait_for(reader.read(), 10)
        assert data[:1] == b"\xe0" and data[2] == rc.PACKET_TOO_LARGE, (limit, data)
        writer.close()
    await subscriber.close()

    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    for limit in ("connect_max_packet_size", "connect_max_properties_size", "connect_max_user_properties",
                  "max_user_properties", "max_properties_size"):
        assert metric(text, "wharf_limit_exceeded_total", limit=limit) == 1, limit


async def test_topic_filters_per_packet_are_capped_while_decoding(broker_process):
    broker = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0" }
dashboard.listeners.http.bind = "127.0.0.1:0"
mqtt { max_topic_filters_per_packet = 500, max_subscriptions = infinity }
""")
    port = broker.port("tcp:default")
    client = await WireClient.open(port)
    await client.connect("batch")
    assert (await client.subscribe(*(f"f/{n}" for n in range(500)), qos=1)).reason_codes == [1] * 500
    for first, name in ((0x82, "SUBSCRIBE"), (0xA2, "UNSUBSCRIBE")):
        # 250,000 one-byte filters in ~1 MB: refused at the 501st, not decoded to the end.
        entries = (b"\x00\x01a\x01" if first == 0x82 else b"\x00\x01a") * 250_000
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_v5(f"flood-{name}"))
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])
        writer.write(_packet(first, b"\x00\x01\x00" + entries))
        data = await asyncio.wait_for(reader.read(), 10)
        assert data[:1] == b"\xe0" and data[2] == rc.PACKET_TOO_LARGE, (name, data)
        writer.close()
    await client.close()
    _, body = broker.admin("GET", "/metrics")
    assert metric(body.decode(), "wharf_limit_exceeded_total", limit="max_topic_filters_per_packet") == 2


def test_bytes_arriving_during_authentication_wait_for_the_post_connack_limits():
    """A PUBLISH larger than connect_max_packet_size that arrives while the CONNECT is being authenticated is
    parsed after the CONNACK, under max_packet_size (not refused under the stricter CONNECT limits)."""
    from wharf_broker.auth import AuthResult
    from wharf_broker.broker import Broker
    from wharf_broker.config.model import BrokerConfig, MqttSettings
    from wharf_broker.connection import Connection
    from wharf_broker.listener_context import ListenerContext
    from wharf_broker.metrics import Registry

    class SlowHook:
        async def authenticate(self, info):
            await asyncio.sleep(0.05)
            return AuthResult.allow()

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__({"peername": ("127.0.0.1", 50000)})
            self.out = bytearray()
            self.closed = False

        def write(self, data) -> None:
            self.out += data

        def close(self) -> None:
            self.closed = True

        def is_closing(self) -> bool:
            return self.closed

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    async def main():
        config = BrokerConfig(mqtt=MqttSettings(connect_max_packet_size=1024))
        broker = Broker(config, auth_hooks=[SlowHook()], registry=Registry())
        published = []
        broker.publish = lambda message: published.append(message) or 1
        connection = Connection(broker, ListenerContext(id="tcp:t", type="tcp"))
        transport = Transport()
        connection.connection_made(transport)
        big = publish_v5("t", b"z" * 4096)
        connection.data_received(connect_v5("slow") + big[:100])
        connection.data_received(big[100:])  # while the hook runs
        await asyncio.sleep(0.3)
        return transport, published
    transport, published = asyncio.run(main())
    assert not transport.closed and transport.out[:1] == b"\x20"
    assert len(published) == 1 and published[0].payload == b"z" * 4096
