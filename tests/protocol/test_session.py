"""Sessions: clean start, session present, expiry, offline queues with their limits and drop policies."""

from __future__ import annotations

import asyncio

import pytest

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT, PUBLISH

KEEP = {"session_expiry_interval": 60}


@pytest.mark.parametrize("version", [4, 5])
async def test_persistent_session_queues_while_offline(broker, version):
    props = KEEP if version == 5 else None
    sub = await broker.client("sub", version=version, clean_start=False, properties=props)
    await sub.subscribe("q/#", qos=2)
    await sub.disconnect()
    pub = await broker.client("pub")
    await pub.publish("q/1", b"one", qos=1)
    await pub.publish("q/2", b"two", qos=2)
    await pub.publish("q/0", b"zero", qos=0)  # queued too: mqueue_store_qos0 is on by default
    back = await broker.raw(version)
    ack = await back.connect("sub", clean_start=False, properties=props)
    assert ack.session_present
    got = [await back.recv() for _ in range(3)]
    assert [(m.payload, m.qos) for m in got] == [(b"one", 1), (b"two", 2), (b"zero", 0)]
    for message in got:
        await back.ack(message)
    await back.disconnect()


async def test_qos0_not_stored_when_disabled(make_broker):
    running = await make_broker(mqueue_store_qos0=False)
    sub = await running.client("sub", version=4, clean_start=False)
    await sub.subscribe("q", qos=1)
    await sub.close()
    pub = await running.client("pub")
    await pub.publish("q", b"lost", qos=0)
    await pub.publish("q", b"kept", qos=1)
    back = await running.raw(4)
    assert (await back.connect("sub", clean_start=False)).session_present
    assert (await back.recv()).payload == b"kept"
    await back.expect_nothing()


async def test_clean_start_discards_the_session(broker):
    sub = await broker.client("sub", version=5, clean_start=False, properties=KEEP)
    await sub.subscribe("c")
    await sub.disconnect()
    again = await broker.raw(5)
    ack = await again.connect("sub", clean_start=True)
    assert not ack.session_present
    assert broker.broker.sessions["sub"].subscriptions == {}
    pub = await broker.client("pub")
    await pub.publish("c", b"x")
    await again.expect_nothing()


async def test_session_expiry(broker):
    sub = await broker.client("brief", version=5, clean_start=False, properties={"session_expiry_interval": 1})
    await sub.subscribe("e", qos=1)
    await sub.disconnect()
    assert "brief" in broker.broker.sessions
    await asyncio.sleep(1.3)
    assert "brief" not in broker.broker.sessions
    back = await broker.raw(5)
    assert not (await back.connect("brief", clean_start=False)).session_present


async def test_session_expiry_zero_ends_with_the_connection(broker):
    client = await broker.client("gone", version=5, clean_start=False)
    await client.subscribe("x")
    await client.disconnect()
    await asyncio.sleep(0.05)
    assert "gone" not in broker.broker.sessions
    v3 = await broker.client("gone3", version=4, clean_start=True)
    await v3.close()
    await asyncio.sleep(0.05)
    assert "gone3" not in broker.broker.sessions


async def test_session_expiry_changed_on_disconnect(broker):
    client = await broker.client("changes", version=5, clean_start=False, properties=KEEP)
    await client.disconnect(0, {"session_expiry_interval": 0})
    await asyncio.sleep(0.05)
    assert "changes" not in broker.broker.sessions
    # From 0 to non-zero on DISCONNECT is a protocol error.
    client = await broker.client("illegal", version=5)
    from wharf_broker.mqtt.packets import Disconnect
    await client.send(Disconnect(0, {"session_expiry_interval": 10}))
    packets = await client.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.PROTOCOL_ERROR)]


async def test_session_expiry_capped(make_broker):
    running = await make_broker(session_expiry_interval=1)
    client = await running.raw(5)
    ack = await client.connect("capped", clean_start=False, properties={"session_expiry_interval": 0xFFFFFFFF})
    assert ack.properties["session_expiry_interval"] == 1
    await client.disconnect()
    await asyncio.sleep(1.3)
    assert "capped" not in running.broker.sessions


@pytest.mark.parametrize("policy, expected", [("drop_oldest", [b"2", b"3", b"4"]),
                                              ("drop_newest", [b"0", b"1", b"2"])])
async def test_mqueue_limit_and_drop_policy(make_broker, policy, expected):
    running = await make_broker(max_mqueue_len=3, mqueue_drop_policy=policy)
    sub = await running.client("sub", version=4, clean_start=False)
    await sub.subscribe("m", qos=1)
    await sub.close()
    pub = await running.client("pub")
    for n in range(5):
        await pub.publish("m", b"%d" % n, qos=1)
    assert running.dropped("queue_full") == 2
    back = await running.raw(4)
    await back.connect("sub", clean_start=False)
    got = [await back.recv() for _ in range(3)]
    assert [m.payload for m in got] == expected
    await back.expect_nothing()


async def test_expired_messages_dropped_from_the_queue(broker):
    sub = await broker.client("sub", version=5, clean_start=False, properties=KEEP)
    await sub.subscribe("x", qos=1)
    await sub.disconnect()
    pub = await broker.client("pub", version=5)
    await pub.publish("x", b"stale", qos=1, properties={"message_expiry_interval": 1})
    await pub.publish("x", b"fresh", qos=1, properties={"message_expiry_interval": 100})
    await asyncio.sleep(1.2)
    back = await broker.raw(5)
    await back.connect("sub", clean_start=False, properties=KEEP)
    message = await back.recv()
    assert message.type == PUBLISH and message.payload == b"fresh"
    # The remaining lifetime is rewritten on delivery.
    assert 98 <= message.properties["message_expiry_interval"] <= 100
    await back.expect_nothing()
    assert broker.dropped("expired") == 1
