"""``GET /api/v5/subscriptions`` pages and filters the EMQX way (issue #18), against a real broker process with
real MQTT subscribers."""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest

from tests.conftest import MINIMAL_CONFIG

from .test_client_pages import _utf8, connect_packet

CLIENTS = 40
TOKEN = "subscriptions-test-token-0123456789"


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_utf8(f) + bytes([qos]) for f, qos in filters)
    return bytes([0x82, len(body)]) + body


def filters_of(index: int) -> list[tuple[str, int]]:
    """Client s-<index>: its own topic at QoS 0, a shared one (group g<index % 2>) at QoS 1, and every
    third client also "sensors/+/temp" at QoS 2."""
    filters = [(f"own/{index}", 0), (f"$share/g{index % 2}/jobs/#", 1)]
    if index % 3 == 0:
        filters.append(("sensors/+/temp", 2))
    return filters


@pytest.fixture
def subscribed(broker_process):
    broker = broker_process(MINIMAL_CONFIG + f'\ndashboard.token = "{TOKEN}"\n', token=TOKEN)
    port = broker.port("tcp:default")
    sockets = []
    try:
        for index in range(CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(connect_packet(f"s-{index:02d}", None) + subscribe_packet(1, filters_of(index)))
        for index, sock in enumerate(sockets):
            expected = 4 + 4 + len(filters_of(index))  # CONNACK, then SUBACK
            data = b""
            while len(data) < expected:
                data += sock.recv(expected - len(data))
            assert data[:4] == b"\x20\x02\x00\x00" and data[4] == 0x90
        yield broker
    finally:
        for sock in sockets:
            sock.close()


def get(broker, **query):
    status, body = broker.admin("GET", "/api/v5/subscriptions?" + urllib.parse.urlencode(query))
    return status, json.loads(body)


TOTAL = sum(len(filters_of(index)) for index in range(CLIENTS))


def test_subscriptions_come_a_page_at_a_time_and_each_once(subscribed):
    status, first = get(subscribed)
    assert status == 200 and len(first["data"]) == TOTAL
    assert first["meta"] == {"page": 1, "limit": 100, "count": TOTAL, "hasnext": False}
    assert first["data"][0] == {"clientid": "s-00", "topic": "own/0", "qos": 0, "nl": 0, "rap": 0, "rh": 0,
                                "share_group": None}
    rows = []
    page = 1
    while True:
        status, body = get(subscribed, page=page, limit=7)
        assert status == 200 and body["meta"]["count"] == TOTAL
        rows += [(row["clientid"], row["topic"]) for row in body["data"]]
        if not body["meta"]["hasnext"]:
            break
        page += 1
    expected = [(f"s-{index:02d}", topic) for index in range(CLIENTS) for topic, _ in filters_of(index)]
    assert rows == expected


def test_subscriptions_filter_by_client_topic_qos_group_and_matching_topic(subscribed):
    assert [row["topic"] for row in get(subscribed, clientid="s-03")[1]["data"]] == [
        "own/3", "$share/g1/jobs/#", "sensors/+/temp"]
    assert get(subscribed, clientid="nobody")[1]["meta"]["count"] == 0
    sensors = get(subscribed, topic="sensors/+/temp")[1]
    assert sensors["meta"]["count"] == len(range(0, CLIENTS, 3)) and {r["qos"] for r in sensors["data"]} == {2}
    assert get(subscribed, qos=1)[1]["meta"]["count"] == CLIENTS
    group = get(subscribed, share_group="g0", limit=1000)[1]
    assert group["meta"]["count"] == CLIENTS // 2 and all(r["share_group"] == "g0" for r in group["data"])
    matching = get(subscribed, match_topic="sensors/kitchen/temp")[1]
    assert matching["meta"]["count"] == len(range(0, CLIENTS, 3))
    assert get(subscribed, match_topic="jobs/1", qos=1)[1]["meta"]["count"] == CLIENTS
    assert [r["clientid"] for r in get(subscribed, match_topic="own/7")[1]["data"]] == ["s-07"]


@pytest.mark.parametrize("query, param", [({"qos": 3}, "qos"), ({"match_topic": "a/+"}, "match_topic"),
                                          ({"limit": 1001}, "limit"), ({"topic": "t" * 300}, "topic")])
def test_bad_subscription_queries_are_refused(subscribed, query, param):
    status, body = get(subscribed, **query)
    assert status == 400 and param in body["message"]


def test_subscriptions_need_the_token(subscribed):
    assert subscribed.admin("GET", "/api/v5/subscriptions", token=None)[0] == 401
