"""``retainer { ... }`` limits and the ``mqtt.max_subscriptions`` default (security issue #14, item 8), on a
real broker process."""

from __future__ import annotations

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import PUBACK, PUBLISH, PUBREC, Publish

from .conftest import metric
from tests.support.wire import WireClient


async def retained_on(port: int, topic_filter: str) -> dict[str, bytes]:
    """What a new subscriber to ``topic_filter`` gets as retained messages."""
    client = await WireClient.open(port)
    await client.connect("reader", clean_start=True)
    await client.subscribe(topic_filter, qos=0)
    found = {}
    try:
        while True:
            packet = await client.recv(timeout=1.0)
            if packet.type == PUBLISH:
                found[packet.topic] = packet.payload
    except TimeoutError:
        pass
    await client.close()
    return found


async def test_retained_store_limits(broker_process):
    broker = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0" }
dashboard.listeners.http.bind = "127.0.0.1:0"
retainer { max_retained_messages = 2, max_payload_size = 100, max_retained_bytes = 1KB }
""")
    port = broker.port("tcp:default")
    live = await WireClient.open(port)
    await live.connect("live")
    await live.subscribe("r/#", qos=1)
    pub = await WireClient.open(port)
    await pub.connect("pub5")

    async def publish(client: WireClient, topic: str, payload: bytes, qos: int = 1):
        await client.send(Publish(topic, payload, qos, True, False, client.packet_id() if qos else None, None))
        return await client.recv() if qos else None

    assert (await publish(pub, "r/1", b"one")).reason_code == 0
    assert (await publish(pub, "r/2", b"two")).reason_code == 0
    ack = await publish(pub, "r/3", b"three")  # a third topic: over max_retained_messages
    assert ack.type == PUBACK and ack.reason_code == rc.QUOTA_EXCEEDED
    ack = await publish(pub, "r/1", b"x" * 101, qos=2)  # over max_payload_size
    assert ack.type == PUBREC and ack.reason_code == rc.QUOTA_EXCEEDED
    # Replacing a stored topic and clearing one work at the limit.
    assert (await publish(pub, "r/1", b"one again")).reason_code == 0
    assert (await publish(pub, "r/2", b"")).reason_code == 0
    assert (await publish(pub, "r/3", b"three")).reason_code == 0
    # The refused 5.0 messages were not routed either.
    seen = []
    while len(seen) < 5:
        packet = await live.recv()
        if packet.type == PUBLISH:
            seen.append((packet.topic, packet.payload))
            await live.ack(packet)
    assert seen == [("r/1", b"one"), ("r/2", b"two"), ("r/1", b"one again"), ("r/2", b""), ("r/3", b"three")]

    # 3.1.1 cannot hear a refusal: routed as a plain message, not stored. QoS 0 alike.
    old = await WireClient.open(port, version=4)
    await old.connect("pub3")
    ack = await publish(old, "r/4", b"four")
    assert ack.type == PUBACK
    await publish(pub, "r/5", b"five", qos=0)
    routed = []
    while len(routed) < 2:
        packet = await live.recv()
        if packet.type == PUBLISH:
            routed.append(packet.topic)
            await live.ack(packet)
    assert routed == ["r/4", "r/5"]
    assert await retained_on(port, "r/#") == {"r/1": b"one again", "r/3": b"three"}

    for client in (live, pub, old):
        await client.close()
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_limit_exceeded_total", limit="retainer.max_retained_messages") == 3
    assert metric(text, "wharf_limit_exceeded_total", limit="retainer.max_payload_size") == 1
    assert metric(text, "wharf_retained_messages") == 2


async def test_retained_bytes_limit(broker_process):
    broker = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0" }
dashboard.listeners.http.bind = "127.0.0.1:0"
retainer { max_retained_bytes = 100 }
""")
    port = broker.port("tcp:default")
    pub = await WireClient.open(port)
    await pub.connect("bytes")
    await pub.send(Publish("b/1", b"x" * 60, 1, True, False, 1, None))
    assert (await pub.recv()).reason_code == rc.NO_MATCHING_SUBSCRIBERS  # stored, nobody subscribed
    await pub.send(Publish("b/2", b"x" * 60, 1, True, False, 2, None))  # 126 bytes in all: refused
    assert (await pub.recv()).reason_code == rc.QUOTA_EXCEEDED
    await pub.send(Publish("b/1", b"x" * 90, 1, True, False, 3, None))  # replacing: 93 bytes, fits
    assert (await pub.recv()).reason_code == rc.NO_MATCHING_SUBSCRIBERS
    await pub.close()
    _, body = broker.admin("GET", "/metrics")
    assert metric(body.decode(), "wharf_limit_exceeded_total", limit="retainer.max_retained_bytes") == 1


async def test_subscriptions_per_client_are_capped_by_default(broker_process):
    broker = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0" }
dashboard.listeners.http.bind = "127.0.0.1:0"
""")
    port = broker.port("tcp:default")
    client = await WireClient.open(port)
    await client.connect("many")
    codes = []
    for start in range(0, 1001, 250):
        codes += (await client.subscribe(*(f"s/{n}" for n in range(start, min(start + 250, 1001))), qos=1)).reason_codes
    assert codes[:1000] == [1] * 1000 and codes[1000] == rc.QUOTA_EXCEEDED
    await client.close()
    _, body = broker.admin("GET", "/metrics")
    assert metric(body.decode(), "wharf_limit_exceeded_total", limit="max_subscriptions") == 1
