"""``GET /api/v5/clients`` pages and filters the EMQX way (issue #18), against a real broker process with a few
hundred real MQTT connections."""

from __future__ import annotations

import json
import re
import socket
import urllib.parse

import pytest

from tests.conftest import MINIMAL_CONFIG

CLIENTS = 250


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, username: str | None) -> bytes:
    """A 3.1.1 CONNECT (clean session, keep-alive 0), with a user name when given."""
    flags = 0x02 | (0x80 if username is not None else 0)
    body = _utf8("MQTT") + bytes([4, flags, 0, 0]) + _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    return bytes([0x10, len(body)]) + body


@pytest.fixture
def crowd(broker_process):
    """A broker with ``CLIENTS`` connected clients c-000.. (even ones with user name team-a, odd ones team-b)."""
    broker = broker_process(MINIMAL_CONFIG + "\nlisteners.tcp.default.max_connections = 1000\n")
    port = broker.port("tcp:default")
    sockets = []
    try:
        for index in range(CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(connect_packet(f"c-{index:03d}", "team-a" if index % 2 == 0 else "team-b"))
        for sock in sockets:
            assert sock.recv(4) == b"\x20\x02\x00\x00"
        yield broker
    finally:
        for sock in sockets:
            sock.close()


def get(broker, **query):
    status, body = broker.admin("GET", "/api/v5/clients?" + urllib.parse.urlencode(query))
    return status, json.loads(body)


def ids(body) -> list[str]:
    return [client["clientid"] for client in body["data"]]


def test_pages_default_to_100_and_cover_every_client_once(crowd):
    status, first = get(crowd)
    assert status == 200
    assert len(first["data"]) == 100
    assert first["meta"] == {"page": 1, "limit": 100, "count": CLIENTS, "hasnext": True}
    assert first["data"][0]["clientid"] == "c-000" and first["data"][0]["username"] == "team-a"
    seen = ids(first)
    for page in (2, 3):
        status, body = get(crowd, page=page)
        assert status == 200
        seen += ids(body)
    assert body["meta"] == {"page": 3, "limit": 100, "count": CLIENTS, "hasnext": False}
    assert seen == [f"c-{index:03d}" for index in range(CLIENTS)]
    status, past = get(crowd, page=4)
    assert status == 200 and past["data"] == [] and past["meta"]["count"] == CLIENTS
    status, small = get(crowd, page=5, limit=7)
    assert ids(small) == [f"c-{index:03d}" for index in range(28, 35)] and small["meta"]["hasnext"]


@pytest.mark.parametrize("query, param", [({"limit": 1001}, "limit"), ({"limit": 0}, "limit"),
                                          ({"page": 0}, "page"), ({"page": "two"}, "page"),
                                          ({"limit": "1e3"}, "limit"), ({"ip_address": "not-an-ip"}, "ip_address"),
                                          ({"proto_ver": "6"}, "proto_ver"), ({"conn_state": "idle"}, "conn_state"),
                                          ({"like_clientid": "x" * 257}, "like_clientid")])
def test_bad_page_limit_or_filter_is_refused_and_counted(broker_process, query, param):
    broker = broker_process()
    status, body = get(broker, **query)
    assert status == 400 and body["code"] == "BAD_REQUEST" and param in body["message"]
    _, metrics = broker.admin("GET", "/metrics")
    counted = re.search(rb'^wharf_admin_list_queries_refused_total\{param="%s"\} (\d+)' % param.encode(), metrics,
                        re.M)
    assert counted and int(counted.group(1)) == 1


def test_filters_by_client_id_user_name_address_protocol_and_state(crowd):
    assert ids(get(crowd, clientid="c-007")[1]) == ["c-007"]
    like = get(crowd, like_clientid="-01")[1]
    assert ids(like) == [f"c-01{digit}" for digit in range(10)] and like["meta"]["count"] == 10
    team_b = get(crowd, username="team-b", limit=1000)[1]
    assert team_b["meta"]["count"] == CLIENTS // 2 and all(c["username"] == "team-b" for c in team_b["data"])
    combined = get(crowd, like_username="team", like_clientid="c-2", page=2, limit=20)[1]
    assert combined["meta"] == {"page": 2, "limit": 20, "count": 50, "hasnext": True}
    assert ids(combined) == [f"c-{index}" for index in range(220, 240)]
    assert get(crowd, ip_address="127.0.0.1")[1]["meta"]["count"] == CLIENTS
    assert get(crowd, ip_address="10.0.0.1")[1]["meta"]["count"] == 0
    assert get(crowd, proto_ver="4")[1]["meta"]["count"] == CLIENTS
    assert get(crowd, proto_ver="5")[1]["meta"]["count"] == 0
    assert get(crowd, conn_state="connected")[1]["meta"]["count"] == CLIENTS
    assert get(crowd, conn_state="disconnected")[1] == {"data": [], "meta": {"page": 1, "limit": 100, "count": 0,
                                                                               "hasnext": False}}
    assert get(crowd, clientid="nobody", unknown_param="ignored")[1]["meta"]["count"] == 0
