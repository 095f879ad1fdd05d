"""MQTT 5.0 extras: topic aliases, maximum packet size both ways, properties passed through."""

from __future__ import annotations

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT, Publish


async def test_inbound_topic_alias(broker):
    sub = await broker.client("sub")
    await sub.subscribe("alias/#")
    pub = await broker.client("pub")
    await pub.send(Publish("alias/long/topic", b"1", properties={"topic_alias": 3}))
    await pub.send(Publish("", b"2", properties={"topic_alias": 3}))
    await pub.send(Publish("alias/other", b"3", properties={"topic_alias": 3}))  # re-mapped
    await pub.send(Publish("", b"4", properties={"topic_alias": 3}))
    got = [await sub.recv() for _ in range(4)]
    assert [(m.topic, m.payload) for m in got] == [("alias/long/topic", b"1"), ("alias/long/topic", b"2"),
                                                    ("alias/other", b"3"), ("alias/other", b"4")]
    assert all("topic_alias" not in (m.properties or {}) for m in got)


async def test_topic_alias_errors(make_broker):
    running = await make_broker(max_topic_alias=5)
    for publish, code in [(Publish("t", b"", properties={"topic_alias": 6}), rc.TOPIC_ALIAS_INVALID),
                          (Publish("", b"", properties={"topic_alias": 2}), rc.PROTOCOL_ERROR)]:
        client = await running.client("a")
        await client.send(publish)
        packets = await client.closed()
        assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, code)]


async def test_properties_passed_through(broker):
    sub = await broker.client("sub", version=5)
    await sub.subscribe("req")
    old = await broker.client("old", version=4)
    await old.subscribe("req")
    pub = await broker.client("pub", version=5)
    props = {"user_property": [("a", "1"), ("a", "2"), ("b", "3")], "response_topic": "resp/1",
             "correlation_data": b"\x00\x01", "payload_format_indicator": 1, "content_type": "text/plain"}
    await pub.publish("req", b"hello", qos=1, properties=props)
    message = await sub.recv()
    assert message.properties == props
    assert message.payload == b"hello"
    assert (await old.recv()).properties is None  # 3.1.1 has no properties


async def test_invalid_response_topic(broker):
    pub = await broker.client("pub", version=5)
    await pub.send(Publish("t", b"", properties={"response_topic": "resp/#"}))
    packets = await pub.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.PROTOCOL_ERROR)]


async def test_client_maximum_packet_size(broker):
    small = await broker.client("small", version=5, properties={"maximum_packet_size": 64})
    await small.subscribe("big/#", qos=1)
    pub = await broker.client("pub", version=5)
    await pub.publish("big/1", b"x" * 200, qos=1)
    await pub.publish("big/2", b"ok", qos=1)
    # The oversized message is never sent; the next one is.
    message = await small.recv()
    assert message.payload == b"ok"
    await small.ack(message)
    await small.ping()  # the PUBACK has been processed once the PINGRESP is back
    assert broker.dropped("too_large") == 1
    assert not broker.broker.sessions["small"].inflight.entries


async def test_server_maximum_packet_size(make_broker):
    running = await make_broker(max_packet_size=128)
    client = await running.client("c", version=5)
    # Announce a 1 KB PUBLISH but send only its fixed header: refused before the body arrives.
    await client.send_raw(b"\x30\x80\x08")
    packets = await client.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.PACKET_TOO_LARGE)]
    old = await running.client("old", version=4)
    await old.send_raw(b"\x30\x80\x08")
    assert await old.closed() == []


async def test_outbound_topic_aliases(make_broker):
    """A client allowing topic aliases gets each topic once, then only its alias (up to its maximum), on a
    listener with ``topic_alias_out = on``."""
    broker = await make_broker(topic_alias_out=True)
    sub = await broker.client("sub", version=5, properties={"topic_alias_maximum": 2})
    await sub.subscribe("al/#")
    plain = await broker.client("plain", version=5)
    await plain.subscribe("al/#")
    pub = await broker.client("pub")
    for topic in ("al/one", "al/one", "al/two", "al/three", "al/two", "al/three"):
        await pub.publish(topic, b"x")
    got = [await sub.recv() for _ in range(6)]
    assert [(m.topic, (m.properties or {}).get("topic_alias")) for m in got] == [
        ("al/one", 1), ("", 1), ("al/two", 2), ("al/three", None), ("", 2), ("al/three", None)]
    # The alias map is the client's own: another subscriber gets plain topics.
    assert [(await plain.recv()).topic for _ in range(6)] == ["al/one", "al/one", "al/two", "al/three", "al/two",
                                                              "al/three"]



async def test_outbound_alias_not_used_when_its_announcement_was_dropped(make_broker):
    broker = await make_broker(topic_alias_out=True)
    sub = await broker.client("sub", version=5, properties={"topic_alias_maximum": 5, "maximum_packet_size": 60})
    await sub.subscribe("t")
    pub = await broker.client("pub")
    await pub.publish("t", b"x" * 100)  # too big: dropped, with the alias it would have announced
    await pub.publish("t", b"small")
    message = await sub.recv()
    assert (message.topic, message.properties["topic_alias"], message.payload) == ("t", 1, b"small")
