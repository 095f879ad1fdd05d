"""Every protocol limit is enforced and counted (``wharf_limit_exceeded_total{limit}``), on a real broker
process with small limits; listener admission limits are counted in ``..._refused_total{reason}``."""

from __future__ import annotations

import asyncio

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT, Publish

from .conftest import metric
from .mqtt_wire import WireClient


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
    assert (await client.subscribe("a/b/c/d")).reason_codes == [rc.TOPIC_FILTER_INVALID]
    assert (await client.subscribe("a", "b", "c")).reason_codes == [1, 1, rc.QUOTA_EXCEEDED]
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
