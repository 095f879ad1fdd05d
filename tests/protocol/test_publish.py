"""PUBLISH at QoS 0/1/2: acknowledgement flows both ways, duplicates, in-flight window, retries."""

from __future__ import annotations

import asyncio

import pytest

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, PubAck, Publish


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_qos_flows_end_to_end(broker, version, qos):
    sub = await broker.client("sub", version=version)
    assert (await sub.subscribe("t/#", qos=2)).reason_codes == [2]
    pub = await broker.client("pub", version=version)
    ack = await pub.publish("t/x", b"payload", qos=qos)
    if qos == 1:
        assert ack.type == PUBACK and ack.reason_code == 0
    elif qos == 2:
        assert ack.type == PUBCOMP and ack.reason_code == 0
    message = await sub.recv()
    assert (message.type, message.topic, message.payload, message.qos) == (PUBLISH, "t/x", b"payload", qos)
    assert not message.retain and not message.dup
    await sub.ack(message)
    await sub.expect_nothing()
    assert not broker.broker.sessions["sub"].inflight.entries
    await pub.disconnect()
    await sub.disconnect()


async def test_delivery_qos_is_the_minimum(broker):
    sub = await broker.client("sub")
    await sub.subscribe("q", qos=1)
    pub = await broker.client("pub")
    await pub.publish("q", b"2", qos=2)
    assert (await sub.recv()).qos == 1
    await pub.publish("q", b"0", qos=0)
    assert (await sub.recv()).qos == 0


async def test_v5_no_matching_subscribers(broker):
    pub = await broker.client("pub", version=5)
    assert (await pub.publish("nobody/here", b"x", qos=1)).reason_code == rc.NO_MATCHING_SUBSCRIBERS
    await pub.send(Publish("nobody/here", b"x", qos=2, packet_id=9))
    assert (await pub.recv()).reason_code == rc.NO_MATCHING_SUBSCRIBERS
    old = await broker.client("old", version=4)
    assert (await old.publish("nobody/here", b"x", qos=1)).reason_code == 0


async def test_qos2_duplicate_is_routed_once(broker):
    sub = await broker.client("sub")
    await sub.subscribe("dup", qos=0)
    pub = await broker.client("pub")
    await pub.send(Publish("dup", b"once", qos=2, packet_id=7))
    assert (await pub.recv()).type == PUBREC
    await pub.send(Publish("dup", b"once", qos=2, dup=True, packet_id=7))  # resent before PUBREL
    assert (await pub.recv()).type == PUBREC
    await pub.send(PubAck(PUBREL, 7))
    assert (await pub.recv()).type == PUBCOMP
    assert (await sub.recv()).payload == b"once"
    await sub.expect_nothing()
    # PUBREL for an unknown id: 5.0 says so.
    await pub.send(PubAck(PUBREL, 99))
    comp = await pub.recv()
    assert (comp.type, comp.reason_code) == (PUBCOMP, rc.PACKET_IDENTIFIER_NOT_FOUND)


async def test_max_awaiting_rel(make_broker):
    running = await make_broker(max_awaiting_rel=2)
    pub = await running.client("pub", version=5)
    for packet_id in (1, 2):
        await pub.send(Publish("a", b"x", qos=2, packet_id=packet_id))
        assert (await pub.recv()).type == PUBREC
    await pub.send(Publish("a", b"x", qos=2, packet_id=3))
    packets = await pub.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.RECEIVE_MAXIMUM_EXCEEDED)]
    # 3.1.1 has no Receive Maximum: the excess message is dropped and counted.
    old = await running.client("old", version=4)
    for packet_id in (1, 2, 3):
        await old.send(Publish("a", b"x", qos=2, packet_id=packet_id))
        assert (await old.recv()).type == PUBREC
    assert running.dropped("awaiting_rel_full") == 1


async def test_await_rel_timeout(make_broker):
    running = await make_broker(await_rel_timeout=0.2)
    pub = await running.client("pub", version=4)
    await pub.send(Publish("a", b"x", qos=2, packet_id=5))
    assert (await pub.recv()).type == PUBREC
    session = running.broker.sessions["pub"]
    assert 5 in session.awaiting_rel
    for _ in range(50):
        await asyncio.sleep(0.05)
        if not session.awaiting_rel:
            break
    assert not session.awaiting_rel


@pytest.mark.parametrize("version", [4, 5])
async def test_inflight_window_and_queue(make_broker, version):
    running = await make_broker(max_inflight=2)
    sub = await running.client("sub", version=version)
    await sub.subscribe("w", qos=1)
    pub = await running.client("pub", version=version)
    for n in range(5):
        await pub.publish("w", b"%d" % n, qos=1)
    first = [await sub.recv(), await sub.recv()]
    assert [m.payload for m in first] == [b"0", b"1"]
    await sub.expect_nothing()  # window full: the rest waits in the queue
    assert len(running.broker.sessions["sub"].mqueue) == 3
    await sub.ack(first[0])
    third = await sub.recv()
    assert third.payload == b"2"
    await sub.expect_nothing()
    for message in (first[1], third):
        await sub.ack(message)
    rest = [await sub.recv(), await sub.recv()]
    assert [m.payload for m in rest] == [b"3", b"4"]


async def test_receive_maximum_limits_the_window(broker):
    sub = await broker.client("sub", version=5, properties={"receive_maximum": 1})
    await sub.subscribe("r", qos=2)
    pub = await broker.client("pub")
    for n in range(3):
        await pub.publish("r", b"%d" % n, qos=2)
    message = await sub.recv()
    assert message.payload == b"0"
    await sub.expect_nothing()
    await sub.ack(message)  # PUBREC / PUBREL / PUBCOMP frees the slot
    assert (await sub.recv()).payload == b"1"


@pytest.mark.parametrize("version", [4, 5])
async def test_unacked_messages_resent_on_reconnect(broker, version):
    sub = await broker.client("sub", version=version, clean_start=False,
                              properties={"session_expiry_interval": 60} if version == 5 else None)
    await sub.subscribe("re", qos=2)
    pub = await broker.client("pub")
    await pub.publish("re", b"one", qos=1)
    await pub.publish("re", b"two", qos=2)
    one, two = await sub.recv(), await sub.recv()
    # Receive "two" up to PUBREL only.
    await sub.send(PubAck(PUBREC, two.packet_id))
    assert (await sub.recv()).type == PUBREL
    await sub.close()  # without acknowledging "one" or completing "two"
    await asyncio.sleep(0.05)

    again = await broker.raw(version)
    ack = await again.connect("sub", clean_start=False,
                              properties={"session_expiry_interval": 60} if version == 5 else None)
    assert ack.session_present
    resent = await again.recv()
    assert (resent.type, resent.payload, resent.packet_id, resent.dup) == (PUBLISH, b"one", one.packet_id, True)
    rel = await again.recv()
    assert (rel.type, rel.packet_id) == (PUBREL, two.packet_id)
    await again.send(PubAck(PUBACK, one.packet_id))
    await again.send(PubAck(PUBCOMP, two.packet_id))
    await again.expect_nothing()
    assert not broker.broker.sessions["sub"].inflight.entries


async def test_v311_retry_interval(make_broker):
    running = await make_broker(retry_interval=0.2)
    sub = await running.client("sub", version=4)
    await sub.subscribe("retry", qos=1)
    pub = await running.client("pub", version=4)
    await pub.publish("retry", b"x", qos=1)
    first = await sub.recv()
    again = await sub.recv(timeout=3)
    assert (again.packet_id, again.payload, again.dup) == (first.packet_id, b"x", True)
    await sub.ack(again)


@pytest.mark.parametrize("topic, code", [("a/+", rc.TOPIC_NAME_INVALID), ("a/#", rc.TOPIC_NAME_INVALID),
                                         ("", rc.TOPIC_NAME_INVALID)])
async def test_publish_to_invalid_topic(broker, topic, code):
    client = await broker.client("bad")
    await client.send(Publish(topic, b"x"))
    packets = await client.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, code)]


async def test_publish_limits(make_broker):
    running = await make_broker(max_qos_allowed=1, retain_available=False, max_topic_levels=3)
    for publish, code in [(Publish("a", b"", qos=2, packet_id=1), rc.QOS_NOT_SUPPORTED),
                          (Publish("a", b"x", retain=True), rc.RETAIN_NOT_SUPPORTED),
                          (Publish("a/b/c/d", b"x"), rc.TOPIC_NAME_INVALID)]:
        client = await running.client("lim")
        await client.send(publish)
        packets = await client.closed()
        assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, code)]
