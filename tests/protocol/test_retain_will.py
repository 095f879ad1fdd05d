"""Retained messages (set, replace, clear, 5.0 retain handling and retain-as-published) and wills."""

from __future__ import annotations

import asyncio

import pytest

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import Will


async def test_retained_set_replace_clear(broker):
    pub = await broker.client("pub")
    await pub.publish("r/1", b"first", qos=1, retain=True)
    await pub.publish("r/1", b"second", qos=1, retain=True)
    await pub.publish("r/2", b"other", qos=0, retain=True)
    sub = await broker.client("sub", version=4)
    await sub.subscribe("r/#", qos=1)
    got = sorted([(m.topic, m.payload, m.retain) for m in [await sub.recv(), await sub.recv()]])
    assert got == [("r/1", b"second", True), ("r/2", b"other", True)]
    await sub.expect_nothing()
    # An empty retained payload clears the topic (and is still delivered to current subscribers).
    await pub.publish("r/1", b"", qos=0, retain=True)
    live = await sub.recv()
    assert (live.topic, live.payload, live.retain) == ("r/1", b"", False)  # 3.1.1: RETAIN 0 when live
    late = await broker.client("late", version=4)
    await late.subscribe("r/#")
    assert [(m.topic, m.payload) for m in [await late.recv()]] == [("r/2", b"other")]
    await late.expect_nothing()
    assert len(broker.broker.retained) == 1


async def test_retained_qos_is_the_minimum_and_exact_topic(broker):
    pub = await broker.client("pub")
    await pub.publish("exact", b"x", qos=2, retain=True)
    sub = await broker.client("sub")
    await sub.subscribe("exact", qos=1)
    message = await sub.recv()
    assert (message.payload, message.qos, message.retain) == (b"x", 1, True)


async def test_retain_handling_options(broker):
    pub = await broker.client("pub")
    await pub.publish("h", b"kept", retain=True)
    sub = await broker.client("sub", version=5)
    await sub.subscribe("h", retain_handling=1)  # new subscription: sent
    assert (await sub.recv()).payload == b"kept"
    await sub.subscribe("h", retain_handling=1)  # existing subscription: not sent
    await sub.expect_nothing()
    await sub.subscribe("h", retain_handling=0)  # always sent
    assert (await sub.recv()).payload == b"kept"
    other = await broker.client("other", version=5)
    await other.subscribe("h", retain_handling=2)  # never sent
    await other.expect_nothing()
    # Shared subscriptions get no retained messages.
    shared = await broker.client("shared", version=5)
    await shared.subscribe("$share/g/h")
    await shared.expect_nothing()


async def test_retain_as_published(broker):
    keep = await broker.client("keep", version=5)
    await keep.subscribe("rap", retain_as_published=True)
    clear = await broker.client("clear", version=5)
    await clear.subscribe("rap")
    pub = await broker.client("pub")
    await pub.publish("rap", b"x", retain=True)
    assert (await keep.recv()).retain is True
    assert (await clear.recv()).retain is False


async def test_retained_message_expiry(broker):
    pub = await broker.client("pub")
    await pub.publish("exp", b"short", retain=True, properties={"message_expiry_interval": 1})
    sub = await broker.client("sub")
    await sub.subscribe("exp")
    message = await sub.recv()
    assert message.properties["message_expiry_interval"] == 1
    await asyncio.sleep(1.1)
    late = await broker.client("late")
    await late.subscribe("exp")
    await late.expect_nothing()


# ----------------------------------------------------------------------------------------------- wills

async def _watcher(broker, topic="will/#"):
    watcher = await broker.client("watcher", version=5)
    await watcher.subscribe(topic, qos=1)
    return watcher


@pytest.mark.parametrize("version", [4, 5])
async def test_will_on_abnormal_close(broker, version):
    watcher = await _watcher(broker)
    client = await broker.client("dying", version=version,
                                 will=Will("will/dying", b"gone", qos=1, retain=True,
                                           properties={"user_property": [("k", "v")]} if version == 5 else None))
    await client.close()  # no DISCONNECT
    message = await watcher.recv()
    assert (message.topic, message.payload, message.qos) == ("will/dying", b"gone", 1)
    if version == 5:
        assert message.properties["user_property"] == [("k", "v")]
    assert broker.broker.retained.get("will/dying").payload == b"gone"


async def test_no_will_on_normal_disconnect(broker):
    watcher = await _watcher(broker)
    client = await broker.client("polite", version=5, will=Will("will/polite", b"gone"))
    await client.disconnect()
    old = await broker.client("polite3", version=4, will=Will("will/polite3", b"gone"))
    await old.disconnect()
    await watcher.expect_nothing(0.5)


@pytest.mark.parametrize("reason", [rc.DISCONNECT_WITH_WILL, rc.UNSPECIFIED_ERROR])
async def test_will_on_disconnect_with_will_or_error(broker, reason):
    watcher = await _watcher(broker)
    client = await broker.client("asked", version=5, will=Will("will/asked", b"please"))
    await client.disconnect(reason)
    assert (await watcher.recv()).payload == b"please"


async def test_will_on_protocol_violation(broker):
    watcher = await _watcher(broker)
    client = await broker.client("broken", version=5, will=Will("will/broken", b"bye"))
    await client.send_raw(b"\x00\x00")  # reserved packet type
    await client.closed()
    assert (await watcher.recv()).payload == b"bye"


async def test_will_delay_and_cancel_on_reconnect(broker):
    watcher = await _watcher(broker)
    props = {"session_expiry_interval": 30}
    client = await broker.client("delayed", version=5, clean_start=False, properties=props,
                                 will=Will("will/delayed", b"late", properties={"will_delay_interval": 2}))
    await client.close()
    await watcher.expect_nothing(0.2)
    back = await broker.client("delayed", version=5, clean_start=False, properties=props)
    await watcher.expect_nothing(2.2)  # cancelled by the reconnect
    await back.close()
    # Without a reconnect it comes after the delay.
    client = await broker.client("delayed2", version=5, properties=props,
                                 will=Will("will/delayed2", b"late", properties={"will_delay_interval": 1}))
    await client.close()
    await watcher.expect_nothing(0.5)
    assert (await watcher.recv(3)).payload == b"late"


async def test_will_delay_capped_by_session_expiry(broker):
    watcher = await _watcher(broker)
    client = await broker.client("short", version=5,  # session expiry 0: the will goes at once
                                 will=Will("will/short", b"now", properties={"will_delay_interval": 60}))
    await client.close()
    assert (await watcher.recv(2)).payload == b"now"


async def test_will_on_take_over(broker):
    watcher = await _watcher(broker)
    await broker.client("twin", version=4, will=Will("will/twin", b"replaced"))
    await broker.client("twin", version=4)
    assert (await watcher.recv()).payload == b"replaced"
