"""``GET /api/v5/mqtt/retainer/messages`` pages the retained messages the EMQX way and filters them by topic
filter through the retained index (issue #18), against a real broker process."""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest

from .test_client_pages import _utf8, connect_packet

RETAINED = 230  # on r/<i // 100>/<i>


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _utf8(topic) + payload
    return bytes([0x31, len(body)]) + body  # QoS 0, RETAIN


@pytest.fixture
def retaining(broker_process):
    broker = broker_process()
    sock = socket.create_connection(("127.0.0.1", broker.port("tcp:default")), timeout=10)
    try:
        packets = b"".join(publish_packet(f"r/{index // 100}/{index}", b"v%d" % index) for index in range(RETAINED))
        sock.sendall(connect_packet("retainer", None) + packets + b"\xc0\x00")
        data = b""
        while len(data) < 6:
            data += sock.recv(6 - len(data))
        assert data == b"\x20\x02\x00\x00\xd0\x00"  # CONNACK, then PINGRESP once every PUBLISH was handled
        yield broker
    finally:
        sock.close()


def get(broker, **query):
    status, body = broker.admin("GET", "/api/v5/mqtt/retainer/messages?" + urllib.parse.urlencode(query))
    return status, json.loads(body)


def topics(body) -> list[str]:
    return [row["topic"] for row in body["data"]]


def system_topics(broker) -> list[str]:
    """The broker's own retained $SYS messages (version, sysdescr, node list): clients cannot publish to $SYS."""
    found = topics(get(broker, topic="$SYS/#", limit=1000)[1])
    assert "$SYS/brokers" in found and all(topic.startswith("$SYS/") for topic in found)
    return found


def test_retained_messages_come_a_page_at_a_time(retaining):
    system = system_topics(retaining)
    status, first = get(retaining)
    assert status == 200
    assert first["meta"] == {"page": 1, "limit": 100, "count": RETAINED + len(system), "hasnext": True}
    assert next(row for row in first["data"] if row["topic"] == "r/0/0") == {
        "topic": "r/0/0", "qos": 0, "from_clientid": "retainer", "payload_size": 2, "expires_in": None}
    seen = topics(first) + topics(get(retaining, page=2)[1]) + topics(get(retaining, page=3)[1])
    assert sorted(seen) == sorted([f"r/{index // 100}/{index}" for index in range(RETAINED)] + system)


def test_retained_messages_filter_by_topic_filter(retaining):
    branch = get(retaining, topic="r/1/+", limit=30, page=2)[1]
    assert branch["meta"] == {"page": 2, "limit": 30, "count": 100, "hasnext": True}
    assert topics(branch) == [f"r/1/{index}" for index in range(130, 160)]
    assert get(retaining, topic="#")[1]["meta"]["count"] == RETAINED  # "#" does not match $SYS topics
    assert set(topics(get(retaining, topic="$SYS/brokers/+/version")[1])) == {
        topic for topic in system_topics(retaining) if topic.endswith("/version")}
    assert topics(get(retaining, topic="r/2/229")[1]) == ["r/2/229"]
    assert get(retaining, topic="nothing/#")[1]["meta"]["count"] == 0


@pytest.mark.parametrize("query", [{"topic": "a/#/b"}, {"topic": "a+"}, {"limit": 5000}])
def test_bad_retained_queries_are_refused(retaining, query):
    status, body = get(retaining, **query)
    assert status == 400 and body["code"] == "BAD_REQUEST"
