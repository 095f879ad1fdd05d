"""SUBSCRIBE / UNSUBSCRIBE: wildcards, $ topics, overlaps, 5.0 options, shared subscriptions, limits; and the
trie router against a reference matcher."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT, Subscribe, SubOptions
from wharf_broker.mqtt.topic import matches, valid_topic_filter
from wharf_broker.router import LocalRouter, Message, Subscription


async def _topics_received(client) -> list[str]:
    got = []
    while True:
        try:
            got.append((await client.recv(0.3)).topic)
        except TimeoutError:
            return sorted(got)


async def test_wildcards_and_dollar_topics(broker):
    sub = await broker.client("sub")
    await sub.subscribe("sport/+/score", "#", "+/x", "$SYS/#", "$internal/#", qos=0)
    plain = await broker.client("plain")
    await plain.subscribe("sport/#")
    pub = await broker.client("pub")
    for topic in ("sport/tennis/score", "sport", "$SYS/uptime", "$internal/x", "a/x"):
        await pub.publish(topic, b"m")
    # "#" and "+/x" do not match "$..." topics; "$internal/#" does. Clients cannot publish under $SYS at all.
    assert await _topics_received(sub) == ["$internal/x", "a/x", "sport", "sport/tennis/score"]
    assert await _topics_received(plain) == ["sport", "sport/tennis/score"]  # "sport/#" matches "sport"


async def test_overlapping_subscriptions_one_delivery_with_all_ids(broker):
    sub = await broker.client("sub", version=5)
    await sub.subscribe("a/+", qos=0, properties={"subscription_identifier": [1]})
    await sub.subscribe("a/#", qos=2, properties={"subscription_identifier": [2]})
    await sub.subscribe("a/b", qos=1)
    pub = await broker.client("pub")
    await pub.publish("a/b", b"x", qos=2)
    message = await sub.recv()
    assert message.qos == 2
    assert sorted(message.properties["subscription_identifier"]) == [1, 2]
    await sub.ack(message)
    await sub.expect_nothing()
    # A 3.1.1 client with overlaps gets one copy too, at the highest QoS.
    old = await broker.client("old", version=4)
    await old.subscribe("x/#", qos=1)
    await old.subscribe("x/y", qos=0)
    await pub.publish("x/y", b"y", qos=1)
    message = await old.recv()
    assert message.qos == 1
    await old.ack(message)
    await old.expect_nothing()


async def test_no_local(broker):
    client = await broker.client("me", version=5)
    await client.subscribe("chat", qos=0, no_local=True)
    other = await broker.client("other", version=5)
    await other.subscribe("chat")
    await client.publish("chat", b"mine")
    assert (await other.recv()).payload == b"mine"
    await client.expect_nothing()
    await other.publish("chat", b"theirs")
    assert (await client.recv()).payload == b"theirs"


async def test_shared_subscriptions_round_robin(broker):
    members = [await broker.client(f"m{n}", version=5) for n in range(3)]
    for member in members:
        assert (await member.subscribe("$share/g1/jobs/#", qos=1)).reason_codes == [1]
    other_group = await broker.client("solo", version=4)
    await other_group.subscribe("$share/g2/jobs/#", qos=0)
    plain = await broker.client("plain", version=4)
    await plain.subscribe("jobs/#")
    pub = await broker.client("pub")
    for n in range(9):
        await pub.publish(f"jobs/{n}", b"%d" % n, qos=1)
    counts = []
    seen = set()
    for member in members:
        got = []
        while True:
            try:
                message = await member.recv(0.3)
            except TimeoutError:
                break
            got.append(message.payload)
            await member.ack(message)
        counts.append(len(got))
        seen.update(got)
    assert counts == [3, 3, 3]  # round-robin, each message to exactly one member
    assert seen == {b"%d" % n for n in range(9)}
    assert len(await _topics_received(other_group)) == 9  # each group gets every message
    assert len(await _topics_received(plain)) == 9
    # Unsubscribing from a shared filter works like any other.
    assert (await members[0].unsubscribe("$share/g1/jobs/#")).reason_codes == [0]


async def test_shared_subscription_rules(make_broker):
    running = await make_broker(shared_subscription=False, wildcard_subscription=False)
    client = await running.client("c", version=5)
    ack = await client.subscribe("$share/g/a", "a/+", "ok/topic", "$share//x", "$share/g", qos=1)
    assert ack.reason_codes == [rc.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, rc.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, 1,
                                rc.TOPIC_FILTER_INVALID, rc.TOPIC_FILTER_INVALID]
    old = await running.client("old", version=4)
    assert (await old.subscribe("$share/g/a", "a/#", qos=1)).reason_codes == [0x80, 0x80]
    # No-local on a shared subscription is a protocol error.
    shared_ok = await make_broker()
    bad = await shared_ok.client("bad", version=5)
    await bad.send(Subscribe(1, [("$share/g/a", SubOptions(0, no_local=True))]))
    packets = await bad.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.PROTOCOL_ERROR)]


async def test_subscription_limits(make_broker):
    running = await make_broker(max_subscriptions=2, max_topic_levels=3, max_qos_allowed=1)
    client = await running.client("c", version=5)
    ack = await client.subscribe("a", "b", "c", "a/b/c/d", qos=2)
    assert ack.reason_codes == [1, 1, rc.QUOTA_EXCEEDED, rc.TOPIC_FILTER_INVALID]
    # Re-subscribing to an existing filter is no new subscription.
    assert (await client.subscribe("a", qos=0)).reason_codes == [0]
    invalid = await client.subscribe("a/#/b", "a+", qos=0)
    assert invalid.reason_codes == [rc.TOPIC_FILTER_INVALID, rc.TOPIC_FILTER_INVALID]


async def test_unsubscribe(broker):
    client = await broker.client("c", version=5)
    await client.subscribe("u/1", "u/2")
    ack = await client.unsubscribe("u/1", "never")
    assert ack.reason_codes == [0, rc.NO_SUBSCRIPTION_EXISTED]
    pub = await broker.client("pub")
    await pub.publish("u/1", b"gone")
    await pub.publish("u/2", b"kept")
    assert (await client.recv()).payload == b"kept"
    await client.expect_nothing()
    old = await broker.client("old", version=4)
    await old.subscribe("u/2")
    ack = await old.unsubscribe("u/2")
    assert ack.type == 11 and ack.reason_codes == []


# ------------------------------------------------------------------------------------ router unit level

levels = st.sampled_from(["a", "b", "c", "$s", ""])
filter_levels = st.sampled_from(["a", "b", "+", "$s", ""])


@st.composite
def topic_filters(draw):
    parts = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


class _Recorder:
    def __init__(self, name: str) -> None:
        self.client_id = name
        self.channel = object()
        self.got = []

    def deliver(self, message, qos, retain, sub_ids):
        self.got.append((message.topic, qos, sub_ids))


@settings(max_examples=150)
@given(filters=st.lists(topic_filters(), min_size=1, max_size=8),
       topics=st.lists(st.lists(levels, min_size=1, max_size=5).map("/".join), min_size=1, max_size=8),
       removals=st.lists(st.integers(0, 7), max_size=4))
def test_router_matches_reference(filters, topics, removals):
    """The trie (with its per-topic cache, through subscribes and unsubscribes) agrees with ``matches``."""
    router = LocalRouter()
    sessions = {}
    for index, topic_filter in enumerate(filters):
        if not valid_topic_filter(topic_filter):
            continue
        session = sessions[index] = _Recorder(f"s{index}")
        router.subscribe(session, Subscription(topic_filter, 1, sub_id=index + 1))
    for topic in topics:  # warm the cache
        router.publish(Message(topic, b"x", 1))
    for index in removals:
        if index in sessions:
            router.unsubscribe(sessions.pop(index), Subscription(filters[index], 1))
    for session in sessions.values():
        session.got.clear()
    for topic in topics:
        router.publish(Message(topic, b"x", 1))
    for index, session in sessions.items():
        expected = [t for t in topics if matches(t, filters[index])]
        assert [t for t, _, _ in session.got] == expected, (filters[index], topics)
    if not sessions:
        assert len(router.trie) == 0


async def test_ignore_loop_deliver(make_broker):
    running = await make_broker(ignore_loop_deliver=True)
    client = await running.client("loop", version=4)
    await client.subscribe("echo")
    other = await running.client("other", version=4)
    await other.subscribe("echo")
    await client.publish("echo", b"x")
    assert (await other.recv()).payload == b"x"
    await client.expect_nothing()


async def test_listener_mountpoint(make_broker):
    running = await make_broker()
    running.listener.mountpoint = "tenant/${clientid}/"
    inside = await running.client("dev1", version=5)
    await inside.subscribe("cmd/#", qos=1)
    assert "tenant/dev1/cmd/#" in running.broker.sessions["dev1"].subscriptions
    running.listener.mountpoint = ""
    outside = await running.client("ops", version=4)
    await outside.subscribe("tenant/+/status")
    # From outside into the mounted client's space: it sees its own topic names.
    await outside.publish("tenant/dev1/cmd/reboot", b"now", qos=1)
    message = await inside.recv()
    assert (message.topic, message.payload) == ("cmd/reboot", b"now")
    await inside.ack(message)
    # The mounted client's publications land under its mountpoint.
    await inside.publish("status", b"up")
    assert (await outside.recv()).topic == "tenant/dev1/status"
    assert (await inside.unsubscribe("cmd/#")).reason_codes == [0]


def test_router_cache_rebuilt_when_too_big_to_scan(monkeypatch):
    import wharf_broker.router as router_module
    monkeypatch.setattr(router_module, "INVALIDATE_SCAN_LIMIT", 3)
    router = LocalRouter()
    first = _Recorder("first")
    router.subscribe(first, Subscription("t/1", 0))
    for n in range(10):  # ten cached topics: more than the scan limit
        router.publish(Message(f"t/{n}", b"x"))
    late = _Recorder("late")
    router.subscribe(late, Subscription("t/+", 0))
    for n in range(10):
        router.publish(Message(f"t/{n}", b"x"))
    assert [t for t, _, _ in late.got] == [f"t/{n}" for n in range(10)]
    router.unsubscribe(late, Subscription("t/+", 0))
    router.publish(Message("t/2", b"x"))
    assert len(late.got) == 10
