"""The Dashboard's Clients page is paged and searchable (issue #18), over plain HTTP against a real broker
process with real MQTT connections."""

from __future__ import annotations

import html
import re
import socket

import pytest

from .test_http import logged_in

CLIENTS = 130


def connect_packet(client_id: str) -> bytes:
    """A 3.1.1 CONNECT (clean session, keep-alive 0) with user name ``user-<client id>``."""
    def utf8(text: str) -> bytes:
        return len(text.encode()).to_bytes(2, "big") + text.encode()
    body = utf8("MQTT") + bytes([4, 0x82, 0, 0]) + utf8(client_id) + utf8(f"user-{client_id}")
    return bytes([0x10, len(body)]) + body


@pytest.fixture
def crowded(dashboard_broker):
    port = dashboard_broker.port("tcp:default")
    sockets = []
    try:
        for index in range(CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(connect_packet(f"dev-{index:03d}"))
        for sock in sockets:
            assert sock.recv(4) == b"\x20\x02\x00\x00"
        yield dashboard_broker
    finally:
        for sock in sockets:
            sock.close()


def listed(page: str) -> list[str]:
    table = page[page.index('id="clients"'):]
    table = table[:table.index("</table>")]
    return re.findall(r"<tr><td>(dev-\d+)</td>", table)


def link(page: str, ident: str) -> str | None:
    match = re.search(rf'id="{ident}" href="([^"]+)"', page)
    return html.unescape(match.group(1)) if match else None


def test_clients_are_shown_a_page_at_a_time(crowded):
    session = logged_in(crowded)
    status, _, page = session.get("/dashboard/clients")
    assert status == 200
    assert f"{CLIENTS} connected" in page
    assert listed(page) == [f"dev-{index:03d}" for index in range(100)]
    assert "Rows 1–100 of 130 · page 1 of 2" in page and link(page, "page-prev") is None
    status, _, second = session.get(link(page, "page-next"))
    assert status == 200
    assert listed(second) == [f"dev-{index:03d}" for index in range(100, CLIENTS)]
    assert "Rows 101–130 of 130 · page 2 of 2" in second and link(second, "page-next") is None
    assert link(second, "page-prev") == "/dashboard/clients?page=1"


def test_clients_can_be_searched_and_the_search_survives_paging(crowded):
    session = logged_in(crowded)
    status, _, page = session.get("/dashboard/clients?like_clientid=dev-01&limit=4")
    assert status == 200
    assert "10 of 130 connected match" in page
    assert listed(page) == ["dev-010", "dev-011", "dev-012", "dev-013"]
    assert 'id="search-like_clientid" value="dev-01"' in page
    following = link(page, "page-next")
    assert following == "/dashboard/clients?like_clientid=dev-01&limit=4&page=2"
    assert listed(session.get(following)[2]) == ["dev-014", "dev-015", "dev-016", "dev-017"]
    by_user = session.get("/dashboard/clients?like_username=user-dev-12")[2]
    assert listed(by_user) == [f"dev-12{digit}" for digit in range(10)]
    assert listed(session.get("/dashboard/clients?ip_address=127.0.0.1")[2])[:3] == ["dev-000", "dev-001", "dev-002"]
    nothing = session.get("/dashboard/clients?like_clientid=%3Cscript%3Ealert(1)%3C/script%3E")[2]
    assert "No client matches the search." in nothing and "<script>alert" not in nothing
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in nothing


def test_a_bad_search_is_refused_on_the_page(crowded):
    session = logged_in(crowded)
    status, _, page = session.get("/dashboard/clients?ip_address=999.1.1.1")
    assert status == 400
    assert "ip_address must be an IPv4 or IPv6 address" in page and listed(page) == []
    status, _, page = session.get("/dashboard/clients?limit=5000")
    assert status == 400 and "limit must be a whole number in 1..1000" in page
