"""The retained store's topic-level index (issue #18): it returns exactly what the naive matcher returns, keeps
limits/bytes/expiry, survives changes between two steps of a walk, and a large match is delivered in slices."""

from __future__ import annotations

import asyncio

import hypothesis.strategies as st
from hypothesis import given, settings

from wharf_broker.broker import RETAINED_SLICE
from wharf_broker.mqtt.frame import encode
from wharf_broker.mqtt.packets import (PINGRESP, PUBLISH, SUBACK, UNSUBACK, Disconnect, PingReq, Subscribe,
                                        SubOptions, Unsubscribe)
from wharf_broker.mqtt.topic import matches
from wharf_broker.retain import RetainedStore
from wharf_broker.router import Message

LEVELS = st.sampled_from(["a", "b", "c", "", "$SYS", "$x", "a$", "ab"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=4).map("/".join).filter(bool)
FILTER_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$x", "+", "+", "#"])


@st.composite
def filters(draw) -> str:
    levels = draw(st.lists(FILTER_LEVELS, min_size=1, max_size=5))
    if "#" in levels:  # "#" only as the last level
        levels = levels[:levels.index("#") + 1]
    return "/".join(levels)


def naive(topics, topic_filter: str) -> set[str]:
    return {topic for topic in topics if matches(topic, topic_filter)}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TOPICS, st.booleans())), st.lists(filters(), min_size=1, max_size=8))
def test_index_matches_the_naive_matcher(operations, topic_filters):
    store = RetainedStore()
    live: dict[str, bytes] = {}
    for index, (topic, keep) in enumerate(operations):
        payload = str(index).encode() if keep else b""
        store.store(Message(topic, payload, retain=True))
        if keep:
            live[topic] = payload
        else:
            live.pop(topic, None)
    assert len(store) == len(live)
    # The broker's own $SYS messages are not held to the retainer's limits.
    clients = {t: p for t, p in live.items() if not t.startswith("$SYS/")}
    assert store.counted == len(clients)
    assert store.bytes == sum(len(t) + len(p) for t, p in clients.items())
    for topic_filter in topic_filters:
        found = store.matching(topic_filter, 0.0)
        assert len(found) == len({m.topic for m in found})  # no topic twice
        assert {m.topic for m in found} == naive(live, topic_filter)
        assert all(m.payload == live[m.topic] for m in found)


def test_clearing_everything_prunes_the_index():
    store = RetainedStore()
    topics = ["a/b/c", "a/b", "a", "/x", "$SYS/y", "a/b/c/d"]
    for topic in topics:
        store.store(Message(topic, b"1", retain=True))
    for topic in reversed(topics):
        store.store(Message(topic, b"", retain=True))
    assert len(store) == 0 and store.bytes == 0
    assert store._root.children is None


def test_expired_messages_are_dropped_from_the_index():
    store = RetainedStore()
    store.store(Message("e/1", b"old", retain=True, expires_at=10.0))
    store.store(Message("e/2", b"new", retain=True, expires_at=30.0))
    store.store(Message("e/3", b"forever", retain=True))
    assert [m.topic for m in store.matching("e/+", 20.0)] == ["e/2", "e/3"]
    assert store.get("e/1") is None and len(store) == 2
    assert store.matching("e/#", 5.0) and store.matching("e/2", 40.0) == []
    assert len(store) == 1


def test_a_walk_resumes_after_the_store_changed():
    store = RetainedStore()
    for index in range(10):
        store.store(Message(f"w/{index}", b"v1", retain=True))
    walk = store.iter_matching("w/#", 0.0)
    first = [next(walk).topic for _ in range(3)]
    store.store(Message("w/5", b"", retain=True))  # cleared before the walk got there
    store.store(Message("w/6", b"v2", retain=True))  # replaced before the walk got there
    store.store(Message("w/0", b"", retain=True))  # cleared after it was handed out
    store.store(Message("w/new/deeper", b"v1", retain=True))  # added meanwhile
    rest = {m.topic: m.payload for m in walk}
    assert first == ["w/0", "w/1", "w/2"]
    assert "w/5" not in rest and rest["w/6"] == b"v2"
    assert set(rest) >= {"w/3", "w/4", "w/7", "w/8", "w/9"}


def test_dollar_topics_are_not_reached_by_a_leading_wildcard():
    store = RetainedStore()
    for topic in ("$SYS/a", "$SYS", "sys/a", "a"):
        store.store(Message(topic, b"1", retain=True))
    assert {m.topic for m in store.matching("#", 0.0)} == {"sys/a", "a"}
    assert {m.topic for m in store.matching("+/a", 0.0)} == {"sys/a"}
    assert {m.topic for m in store.matching("$SYS/#", 0.0)} == {"$SYS/a", "$SYS"}


# -- delivery in slices, on a real (in-process) broker ---------------------------------------------------------

COUNT = RETAINED_SLICE * 4 + 7


def fill(running, count: int = COUNT, qos: int = 0) -> None:
    for index in range(count):
        running.broker.retained.store(Message(f"big/{index}", b"x%d" % index, qos, retain=True))


async def test_a_large_match_is_delivered_in_slices_in_order(broker):
    fill(broker)
    sub = await broker.client("slices")
    # SUBSCRIBE and PINGREQ arrive together: the PINGRESP goes out after the first slice, not after everything.
    await sub.send_raw(encode(Subscribe(1, [("big/#", SubOptions(0))]), 5) + encode(PingReq(), 5))
    assert (await sub.recv()).type == SUBACK
    kinds, topics = [], []
    while len(topics) < COUNT:
        packet = await sub.recv()
        kinds.append(packet.type)
        if packet.type == PUBLISH:
            assert packet.retain and packet.qos == 0
            topics.append(packet.topic)
    assert kinds.index(PINGRESP) == RETAINED_SLICE  # PINGRESP right after the first slice
    assert topics == [f"big/{index}" for index in range(COUNT)]
    await sub.disconnect()


async def test_a_client_that_disconnects_stops_its_retained_delivery(broker):
    fill(broker)
    sub = await broker.client("leaver")
    await sub.send_raw(encode(Subscribe(1, [("big/#", SubOptions(0))]), 5) + encode(Disconnect(0), 5))
    packets = await sub.closed()
    publishes = [p for p in packets if p.type == PUBLISH]
    assert len(publishes) == RETAINED_SLICE
    await sub.close()


async def test_unsubscribing_stops_the_retained_delivery(broker):
    fill(broker)
    sub = await broker.client("unsub")
    await sub.send_raw(encode(Subscribe(1, [("big/#", SubOptions(0))]), 5) + encode(Unsubscribe(2, ["big/#"]), 5))
    publishes = 0
    while True:
        packet = await sub.recv()
        if packet.type == UNSUBACK:
            break
        publishes += packet.type == PUBLISH
    await sub.expect_nothing(0.3)
    assert publishes == RETAINED_SLICE
    await sub.disconnect()


async def test_qos1_retained_beyond_the_queue_wait_for_acks_instead_of_being_dropped(broker):
    # More than max_inflight (32) + max_mqueue_len (1000): pushed all at once, the oldest would be dropped.
    count = 1500
    fill(broker, count, qos=1)
    sub = await broker.client("patient")
    await sub.subscribe("big/#", qos=1)
    topics = []
    while len(topics) < count:
        packet = await sub.recv()
        assert packet.type == PUBLISH and packet.qos == 1 and packet.retain
        topics.append(packet.topic)
        await sub.ack(packet)
    assert topics == [f"big/{index}" for index in range(count)]
    assert broker.dropped("queue_full") == 0
    await sub.expect_nothing(0.2)
    await sub.disconnect()


async def test_a_slow_qos0_reader_gets_every_retained_message(make_broker):
    running = await make_broker(max_send_buffer=256 * 1024)
    payload = b"p" * 65536
    for index in range(200):  # 12.8 MB: far beyond max_send_buffer while the client is not reading
        running.broker.retained.store(Message(f"large/{index}", payload, retain=True))
    sub = await running.client("slow")
    await sub.send(Subscribe(1, [("large/#", SubOptions(0))]))
    await asyncio.sleep(0.5)  # not reading: the socket and the transport's buffer fill up
    assert (await sub.recv()).type == SUBACK
    topics = []
    while len(topics) < 200:
        packet = await sub.recv()
        assert packet.type == PUBLISH and len(packet.payload) == len(payload)
        topics.append(packet.topic)
    assert topics == [f"large/{index}" for index in range(200)]
    assert running.dropped("slow_consumer") == 0
    await sub.disconnect()
