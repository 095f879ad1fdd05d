"""Three wharf-broker processes joined through a three-node NATS cluster, with real MQTT clients."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time

import pytest

from .mqtt_client import Client, await_route

pytestmark = pytest.mark.timeout(240)


def tcp(node) -> int:
    return node.port("tcp:default")


@pytest.fixture
def three(cluster_nodes):
    return cluster_nodes(3)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_cross_node_delivery_in_order_at_each_qos(three, qos):
    publisher = Client(tcp(three[0]), "pub")
    publisher.connect()
    subscribers = []
    for index, node in enumerate(three):
        client = Client(tcp(node), f"sub-{index}")
        client.connect()
        client.subscribe("orders/#", qos)
        subscribers.append(client)
    await_route(publisher, subscribers[1:], "orders/probe")
    subscribers[0].drain()
    count = 100
    for n in range(count):
        reason = publisher.publish_acked(f"orders/{n % 3}", str(n), qos) if qos else None
        if not qos:
            publisher.publish(f"orders/{n % 3}", str(n), 0)
        assert reason in (None, 0)
    for index, client in enumerate(subscribers):
        got = client.take(count)
        payloads = [int(m.payload) for m in got]
        assert payloads == list(range(count)), f"node {index} got {payloads}"
        assert all(m.qos == qos for m in got)
    for client in [publisher, *subscribers]:
        client.close()


def test_overlapping_filters_get_one_copy(three):
    publisher = Client(tcp(three[0]), "pub")
    publisher.connect()
    sub = Client(tcp(three[1]), "sub")
    sub.connect()
    sub.subscribe("a/+", 1)
    sub.subscribe("a/#", 1)
    await_route(publisher, [sub], "a/probe")
    for n in range(20):
        assert publisher.publish_acked("a/b", str(n), 1) == 0
    got = sub.take(20)
    assert [int(m.payload) for m in got] == list(range(20))
    time_limit = time.monotonic() + 1
    extra = []
    while time.monotonic() < time_limit:
        extra += sub.drain()
        time.sleep(0.1)
    assert extra == [], "a message came twice"


def test_topics_with_nats_special_characters(three):
    publisher = Client(tcp(three[0]), "pub")
    publisher.connect()
    sub = Client(tcp(three[2]), "sub")
    sub.connect()
    sub.subscribe("odd/#", 1)
    sub.subscribe("$internal/x/+", 1)
    await_route(publisher, [sub], "odd/probe")
    topics = ["odd/a.b", "odd/*", "odd/>", "odd//empty", "odd/sp ace", "odd/ünï", "odd/%41", "odd/tab\t"]
    for topic in topics:
        assert publisher.publish_acked(topic, topic, 1) == 0
    got = sub.take(len(topics))
    assert [m.topic for m in got] == topics
    # "odd/+" must not see "odd/a.b" as two levels, nor "*" as a wildcard: a filter on one of them only.
    only = Client(tcp(three[1]), "only")
    only.connect()
    only.subscribe("odd/*", 1)
    await_route(publisher, [only, sub], "odd/*")
    for topic in topics:
        publisher.publish_acked(topic, "again", 1)
    got = only.take(1)
    assert [m.topic for m in got] == ["odd/*"]
    assert [m.topic for m in sub.take(len(topics))] == topics
    # A "$" topic crosses nodes too ($SYS itself is the broker's own: clients cannot publish there).
    publisher.publish_acked("$internal/x/y", "dollar", 1)
    assert [m.topic for m in sub.take(1)] == ["$internal/x/y"]


def test_retained_is_the_same_from_every_node(three):
    writer = Client(tcp(three[0]), "writer")
    writer.connect()
    assert writer.publish_acked("cfg/site", "v1", 1, retain=True) == 0
    # The publisher is acknowledged once the bucket has it; every node's mirror follows the bucket.
    for index, node in enumerate(three):
        deadline = time.monotonic() + 20
        while True:
            reader = Client(tcp(node), f"reader-{index}")
            reader.connect()
            reader.subscribe("cfg/#", 1)
            got = reader.take(1, timeout=1)
            reader.close()
            if got:
                break
            assert time.monotonic() < deadline, f"node {index} never served the retained message"
        assert [(m.topic, m.payload, m.retain) for m in got] == [("cfg/site", b"v1", True)], f"node {index}"
    clearer = Client(tcp(three[2]), "clearer")
    clearer.connect()
    assert clearer.publish_acked("cfg/site", b"", 1, retain=True) == 0
    for index, node in enumerate(three):
        deadline = time.monotonic() + 20
        while True:
            reader = Client(tcp(node), f"late-{index}")
            reader.connect()
            reader.subscribe("cfg/#", 1)
            got = reader.take(1, timeout=0.5)
            reader.close()
            if not got:
                break
            assert time.monotonic() < deadline, f"node {index} still serves the cleared retained message"


def test_shared_subscription_each_message_to_one_member_across_nodes(three):
    publisher = Client(tcp(three[0]), "pub")
    publisher.connect()
    members = []
    for index, node in enumerate(three):
        member = Client(tcp(node), f"member-{index}")
        member.connect()
        member.subscribe("$share/workers/jobs/+", 1)
        members.append(member)
    # Wait until every node's queue subscription is in: probe until each member has had a turn.
    deadline = time.monotonic() + 60
    waiting = set(range(3))
    while waiting:
        assert time.monotonic() < deadline, f"members {waiting} never got a shared message"
        publisher.publish_acked("jobs/probe", "probe", 1)
        time.sleep(0.05)
        for index in list(waiting):
            if members[index].drain():
                waiting.discard(index)
    time.sleep(0.5)
    for member in members:
        member.drain()
    count = 90
    for n in range(count):
        assert publisher.publish_acked(f"jobs/{n % 5}", str(n), 1) == 0
    received: list[int] = []
    per_member = []
    deadline = time.monotonic() + 30
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = [[int(m.payload) for m in member.drain()] for member in members]
        per_member.append(batch)
        for got in batch:
            received += got
    assert sorted(received) == list(range(count)), "each message exactly once across the group"
    totals = [sum(len(batch[i]) for batch in per_member) for i in range(3)]
    assert sum(1 for total in totals if total) >= 2, f"not balanced across nodes: {totals}"


def test_session_taken_over_across_nodes_with_queued_messages(three):
    first = Client(tcp(three[0]), "roamer", clean=False, session_expiry=600)
    assert first.connect() is False
    first.subscribe("inbox/roamer", 1)
    publisher = Client(tcp(three[2]), "pub")
    publisher.connect()
    await_route(publisher, [first], "inbox/roamer")
    # A second connection with the same client id on another node takes the session over.
    second = Client(tcp(three[1]), "roamer", clean=False, session_expiry=600)
    assert second.connect() is True, "session present after moving to another node"
    reason = first.disconnects.get(timeout=20)
    assert int(reason.value if hasattr(reason, "value") else reason) == 0x8E  # session taken over
    first.paho.loop_stop()
    await_route(publisher, [second], "inbox/roamer")
    # Offline: messages queue in the session on node 1, then the client comes back on node 0.
    second.close()
    time.sleep(0.5)
    for n in range(5):
        assert publisher.publish_acked("inbox/roamer", f"queued-{n}", 1) == 0
    third = Client(tcp(three[0]), "roamer", clean=False, session_expiry=600)
    assert third.connect() is True
    got = third.take(5)
    assert [m.payload for m in got] == [f"queued-{n}".encode() for n in range(5)]
    # The subscription lives on in the new node.
    assert publisher.publish_acked("inbox/roamer", "after", 1) == 0
    assert [m.payload for m in third.take(1)] == [b"after"]
    third.close()
    # The registry entry names the session's node.
    status, body = three[0].admin("GET", "/healthz")
    assert status == 200 and json.loads(body)["cluster"]["backplane"]["connected"]


def _wills(client: Client, marker_count: int) -> tuple[list, int]:
    got = client.take(10, timeout=5)
    wills = [m for m in got if m.topic == "status/will"]
    markers = [m for m in got if m.topic == "status/marker"]
    return wills, len(markers)


def test_will_fires_once_across_the_cluster(three):
    watchers = []
    for index, node in enumerate(three):
        watcher = Client(tcp(node), f"watch-{index}")
        watcher.connect()
        watcher.subscribe("status/#", 1)
        watchers.append(watcher)
    dying = Client(tcp(three[0]), "dying", will=("status/will", b"gone", 1))
    dying.connect()
    await_route(dying, watchers[1:], "status/probe")
    for watcher in watchers:
        watcher.drain()
    dying.drop()
    # A marker from the same node after the will: once it arrives, the will arrived before it.
    marker = Client(tcp(three[0]), "marker")
    marker.connect()
    time.sleep(1.0)
    marker.publish_acked("status/marker", "m", 1)
    for index, watcher in enumerate(watchers):
        got = []
        deadline = time.monotonic() + 20
        while not any(m.topic == "status/marker" for m in got) and time.monotonic() < deadline:
            got += watcher.take(1, timeout=1)
        wills = [m for m in got if m.topic == "status/will"]
        assert [m.payload for m in wills] == [b"gone"], f"node {index}: {[(m.topic, m.payload) for m in got]}"


def test_delayed_will_cancelled_by_reconnecting_on_another_node(three):
    watcher = Client(tcp(three[2]), "watch")
    watcher.connect()
    watcher.subscribe("status/#", 1)
    client = Client(tcp(three[0]), "mover", clean=False, session_expiry=600,
                    will=("status/will", b"gone", 1), will_delay=3)
    client.connect()
    await_route(client, [watcher], "status/probe")
    client.drop()
    back = Client(tcp(three[1]), "mover", clean=False, session_expiry=600)
    assert back.connect() is True
    time.sleep(4.5)  # past the will delay
    marker = Client(tcp(three[0]), "marker")
    marker.connect()
    marker.publish_acked("status/marker", "m", 1)
    got = []
    deadline = time.monotonic() + 20
    while not any(m.topic == "status/marker" for m in got) and time.monotonic() < deadline:
        got += watcher.take(1, timeout=1)
    assert [m.topic for m in got] == ["status/marker"], "the will must not fire: the client came back"


def test_node_cut_off_from_nats_says_so_and_refuses_qos1(three, nats_cluster):
    sub = Client(tcp(three[1]), "sub")
    sub.connect()
    sub.subscribe("cut/#", 1)
    publisher = Client(tcp(three[0]), "pub")
    publisher.connect()
    await_route(publisher, [sub], "cut/probe")
    for node in nats_cluster.nodes:
        node.kill()
    deadline = time.monotonic() + 30
    while True:
        status, body = three[0].admin("GET", "/readyz", token=None)
        if status == 503:
            break
        assert time.monotonic() < deadline, "readyz still 200 without NATS"
        time.sleep(0.2)
    ready = json.loads(body)
    assert ready["cluster"]["backplane"]["connected"] is False
    status, body = three[0].admin("GET", "/healthz", token=None)
    assert status == 200 and json.loads(body)["status"] == "degraded"
    status, body = three[0].admin("GET", "/metrics")
    assert "wharf_cluster_backplane_up 0" in body.decode()
    # QoS 1 for a subscriber on another node cannot be honoured: refused with a reason code, not acked.
    assert publisher.publish_acked("cut/x", "lost?", 1) == 0x80
    # Back with NATS: accepted again and delivered.
    for node in nats_cluster.nodes:
        node.start()
    deadline = time.monotonic() + 60
    while three[0].admin("GET", "/readyz", token=None)[0] != 200:
        assert time.monotonic() < deadline, "never ready again after NATS came back"
        time.sleep(0.3)
    deadline = time.monotonic() + 60
    while True:
        reason = publisher.publish_acked("cut/y", "back", 1)
        if reason == 0:
            break
        assert time.monotonic() < deadline, f"QoS 1 still refused ({reason:#x})"
        time.sleep(0.5)
    payloads = [m.payload for m in sub.take(1)]
    assert payloads == [b"back"]


def test_session_owner_travels_with_the_session_between_nodes(cluster_nodes, tmp_path):
    """A session created by alice on node 0 is not bob's on node 1 (he gets a fresh one, and alice's queue
    stays hers), and alice resumes it on node 1 with her queued message."""
    users = tmp_path / "users.txt"
    for name, password in (("alice", "wonderland"), ("bob", "builder")):
        subprocess.run([sys.executable, "-m", "wharf_broker.authn.passwd", "-f", str(users), "--stdin",
                        "--iterations", "1000", name], input=password.encode() + b"\n", check=True, timeout=60)
    acl = tmp_path / "acl.conf"
    acl.write_text('{allow, all, all, ["users/${username}/#"]}.\n{deny, all}.\n')
    nodes = cluster_nodes(2, extra=f"""
authentication {{ allow_anonymous = false, password_file {{ enable = true, path = "{users}" }} }}
authorization {{ no_match = deny, file {{ enable = true, path = "{acl}" }} }}
""")

    def client(node, client_id, user, password, **options):
        made = Client(tcp(node), client_id, **options)
        made.paho.username_pw_set(user, password)
        return made

    alice = client(nodes[0], "alice-dev", "alice", "wonderland", clean=False, session_expiry=600)
    assert alice.connect() is False
    alice.subscribe("users/alice/#", 1)
    feed = client(nodes[0], "alice-feed", "alice", "wonderland")
    feed.connect()
    await_route(feed, [alice], "users/alice/probe")
    alice.close()
    time.sleep(0.5)
    assert feed.publish_acked("users/alice/inbox", "queued-1", 1) == 0
    # Bob, with his own password, asks node 1 for alice's session: a fresh one of his own, nothing of hers.
    bob = client(nodes[1], "alice-dev", "bob", "builder", clean=False, session_expiry=600)
    assert bob.connect() is False
    bob.subscribe("users/bob/#", 1)
    assert bob.publish_acked("users/bob/sentinel", "b1", 1) == 0
    assert [(m.topic, m.payload) for m in bob.take(1)] == [("users/bob/sentinel", b"b1")]
    bob.close()
    # Alice's session moves to node 1 with its queued message.
    again = client(nodes[1], "alice-dev", "alice", "wonderland", clean=False, session_expiry=600)
    assert again.connect() is True
    assert [m.payload for m in again.take(1)] == [b"queued-1"]
    again.close()
    feed.close()
    status, body = nodes[1].admin("GET", "/metrics")
    assert status == 200 and 'wharf_session_owner_mismatch_total{action="discard"} 1' in body.decode()


def test_each_node_publishes_its_own_sys_topics(cluster_nodes):
    """$SYS is per node: a subscriber on one node gets every node's uptime (each published once, by its own
    node) and only its own node's retained version; a client's connect event comes from the node it is on."""
    nodes = cluster_nodes(3, extra="sys_topics { sys_msg_interval = 2s, sys_heartbeat_interval = 1s }")
    names = [f"wharf-{index}@127.0.0.1" for index in range(3)]
    watcher = Client(tcp(nodes[1]), "sys-watcher")
    watcher.connect()
    watcher.subscribe("$SYS/brokers/+/version", 0)
    [version] = watcher.take(1)  # the retained one: this node's own, at once
    assert version.topic == f"$SYS/brokers/{names[1]}/version"
    watcher.subscribe("$SYS/brokers/+/uptime", 0)
    watcher.subscribe("$SYS/brokers/+/clients/+/connected", 0)
    time.sleep(1.5)  # the other nodes learn of the new interest
    watcher.drain()
    elsewhere = Client(tcp(nodes[2]), "sys-elsewhere")
    elsewhere.connect()
    seen: dict[str, list] = {}
    events = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (len(seen) < 3 or not events or min(map(len, seen.values())) < 2):
        for message in watcher.drain():
            if message.topic.endswith("/uptime"):
                node = message.topic.split("/")[2]
                seen.setdefault(node, []).append(message.payload)
            elif "/clients/" in message.topic:
                events.append(message)
        time.sleep(0.2)
    assert sorted(seen) == names
    for uptimes in seen.values():  # relayed once: no uptime twice
        assert len(uptimes) == len(set(uptimes)), uptimes
    assert [m.topic for m in events] == [f"$SYS/brokers/{names[2]}/clients/sys-elsewhere/connected"]
    assert json.loads(events[0].payload)["clientid"] == "sys-elsewhere"



def test_take_overs_under_a_stream_of_messages_lose_no_acknowledged_one(nats_cluster, broker_process):
    """Each broker on its own NATS server (the publisher's messages and the take-over request reach the session's
    node over different routes), QoS 1 messages published without pause while the session moves back and forth
    between two nodes: every message the publisher had acknowledged reaches the client once the moves are over."""
    from .conftest import node_config

    nodes = [broker_process(node_config(f"wharf-{index}@127.0.0.1", [url], "mqtt.max_mqueue_len = 1000000"),
                            timeout=60) for index, url in enumerate(nats_cluster.urls)]
    roamer = Client(tcp(nodes[1]), "roamer", clean=False, session_expiry=600)
    roamer.connect()
    roamer.subscribe("stream/#", 1)
    publisher = Client(tcp(nodes[2]), "pub")
    publisher.paho.max_inflight_messages_set(200)
    publisher.paho.max_queued_messages_set(0)
    publisher.connect()
    await_route(publisher, [roamer], "stream/probe")
    stop = threading.Event()
    infos: list = []

    def publish() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            infos.append(publisher.publish("stream/x", f"m-{n}", 1))
            n += 1
            if n % 50 == 0:
                time.sleep(0.005)

    thread = threading.Thread(target=publish, daemon=True)
    received: set = set()
    thread.start()
    try:
        for move in range(6):
            time.sleep(1.0)  # the take-over (and its replay) is over before the next one
            received.update(m.payload for m in roamer.drain())
            roamer.close()
            received.update(m.payload for m in roamer.drain())
            roamer = Client(tcp(nodes[move % 2]), "roamer", clean=False, session_expiry=600)
            assert roamer.connect() is True
    finally:
        stop.set()
        thread.join(10)
    for info in infos:
        info.wait_for_publish(20)
    codes = collections.Counter(publisher.acks.get(info.mid) for info in infos)
    assert codes[0] == len(infos) > 1000, f"acknowledgements (reason code: count): {dict(codes)}"
    acked = {f"m-{n}".encode() for n in range(len(infos))}
    deadline = time.monotonic() + 30
    while not acked <= received and time.monotonic() < deadline:
        received.update(m.payload for m in roamer.take(1, timeout=max(0.1, deadline - time.monotonic())))
    missing = sorted(acked - received, key=lambda p: int(p[2:]))
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost: {missing[:20]}"
    roamer.close()
    publisher.close()

