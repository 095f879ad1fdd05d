"""The HTTP authenticator (a real aiohttp service on loopback: decisions, cache, timeouts, errors) and the
PROXY protocol on an ssl listener (header before the TLS handshake; the v2 TLS TLV's certificate CN used by
the ACL; the real client address in the admin API); only the trusted load balancer may send a header (a client
that connects directly with a forged address or TLS TLV is closed, counted and logged)."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from aiohttp import web
from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import PUBACK

from .conftest import metric
from tests.support.wire import WireClient, connack_code, proxy_v2_header
from .qos1_witness import PahoQos1Witness

# The load balancer of these tests: a second loopback address, so that a client on 127.0.0.1 bypasses it.
BALANCER = "127.0.0.2"


@pytest.fixture
async def auth_service():
    """An HTTP authenticator service: allow for password "open-sesame", deny for user "blocked", a 500 for
    user "broken", a slow answer for user "slow", ignore otherwise."""
    requests: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        requests.append(body)
        if body["username"] == "slow":
            await asyncio.sleep(3)
        if body["username"] == "broken":
            return web.Response(status=500)
        if body["username"] == "blocked":
            return web.json_response({"result": "deny"})
        if body["password"] == "open-sesame":
            return web.json_response({"result": "allow"})
        return web.json_response({"result": "ignore"})

    app = web.Application()
    app.router.add_post("/auth", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/auth", requests
    await runner.cleanup()


async def test_http_authenticator(broker_process, auth_service):
    url, requests = auth_service
    broker = broker_process(f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
authentication {{
  allow_anonymous = false
  http {{ enable = true, url = "{url}", request_timeout = 500ms, cache_ttl = 1m, cache_max_size = 100 }}
}}
""")
    port = broker.port("tcp:default")
    code = await connack_code(port, "h1", username="carol", password=b"open-sesame")
    assert code == rc.SUCCESS
    assert requests[-1] == {"clientid": "h1", "username": "carol", "password": "open-sesame",
                            "peerhost": "127.0.0.1", "listener": "tcp:default", "proto_ver": 5,
                            "cert_common_name": None}
    asked = len(requests)
    assert await connack_code(port, "h1", username="carol", password=b"open-sesame") == rc.SUCCESS
    assert len(requests) == asked  # answered from the cache
    assert await connack_code(port, "h2", username="blocked", password=b"open-sesame") == rc.NOT_AUTHORIZED
    # ignore, a 500 and a timeout all fall through to the chain's end: credentials nobody accepted.
    for username in ("carol-wrong", "broken", "slow"):
        password = b"nope" if username == "carol-wrong" else b"x"
        assert await connack_code(port, "h3", username=username, password=password) == \
            rc.BAD_USER_NAME_OR_PASSWORD, username
    assert "open-sesame" not in broker.log
    _, body = broker.admin("GET", "/metrics")
    assert metric(body.decode(), "wharf_authn_total", result="deny") == 4


async def test_proxy_protocol_before_tls(tmp_path, broker_process, certs):
    acl = tmp_path / "acl.conf"
    acl.write_text('{allow, {cert_common_name, "meter-1"}, publish, ["meters/1/#"]}.\n')
    broker = broker_process(f"""
listeners.ssl.lb {{
  bind = "127.0.0.1:0"
  proxy_protocol = true
  proxy_protocol_timeout = 2s
  proxy_protocol_trusted_cidrs = ["127.0.0.2/32"]
  ssl_options {{ certfile = "{certs / 'server.crt'}", keyfile = "{certs / 'server.key'}" }}
}}
listeners.tcp.lbplain {{
  bind = "127.0.0.1:0"
  proxy_protocol = true
  proxy_protocol_trusted_cidrs = ["127.0.0.2"]
  peer_cert_as_username = cn
  peer_cert_as_clientid = cn
}}
dashboard.listeners.http.bind = "127.0.0.1:0"
authorization {{
  no_match = deny
  file {{ enable = true, path = "{acl}" }}
}}
""")
    port = broker.port("ssl:lb")
    tls = ssl.create_default_context(cafile=str(certs / "rootCA.crt"))
    # The load balancer verified a client certificate with CN "meter-1" and says so in a TLV.
    meter = await WireClient.open(port, tls=tls, proxy_header=proxy_v2_header("203.0.113.5", 40001, "meter-1"),
                                  source=BALANCER)
    unverified = await WireClient.open(port, tls=tls, source=BALANCER,
                                       proxy_header=proxy_v2_header("203.0.113.6", 40002, "meter-1", verified=False))
    try:
        assert (await meter.connect("m1")).reason_code == 0
        assert (await unverified.connect("m2")).reason_code == 0
        ack = await meter.publish("meters/1/reading", b"42", qos=1)
        assert ack.type == PUBACK and ack.reason_code in (rc.SUCCESS, rc.NO_MATCHING_SUBSCRIBERS)
        ack = await unverified.publish("meters/1/reading", b"42", qos=1)
        assert ack.reason_code == rc.NOT_AUTHORIZED  # an unverified certificate gives no identity
        status, body = broker.admin("GET", "/api/v5/clients")
        assert status == 200
        peers = {client["clientid"]: client["peer"] for client in json.loads(body)["data"]}
        assert peers["m1"] == "203.0.113.5:40001" and peers["m2"] == "203.0.113.6:40002"
    finally:
        await meter.close()
        await unverified.close()
    # TLS ended at the balancer, plain TCP to the broker: peer_cert_as_* take the TLV's CN.
    plain = await WireClient.open(broker.port("tcp:lbplain"), source=BALANCER,
                                  proxy_header=proxy_v2_header("203.0.113.7", 40003, "meter-1"))
    try:
        assert (await plain.connect("")).reason_code == 0
        status, body = broker.admin("GET", "/api/v5/clients")
        found = [client for client in json.loads(body)["data"] if client["listener"] == "tcp:lbplain"]
        assert [(c["clientid"], c["username"]) for c in found] == [("meter-1", "meter-1")]
        ack = await plain.publish("meters/1/reading", b"42", qos=1)
        assert ack.reason_code in (rc.SUCCESS, rc.NO_MATCHING_SUBSCRIBERS)
    finally:
        await plain.close()
    # No header from the balancer: TLS straight away is refused (and counted).
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(BALANCER, 0))
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    _, body = broker.admin("GET", "/metrics")
    assert metric(body.decode(), "wharf_listener_connections_refused_total", listener="ssl:lb",
                  reason="proxy_protocol") == 1



async def _closed_without_answer(port: int, data: bytes) -> bool:
    """Send ``data`` from 127.0.0.1 (not the balancer) and tell whether the broker closed without a byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(65536), 10) == b""
        except ConnectionResetError:
            return True
    finally:
        writer.close()


async def test_only_the_trusted_balancer_may_send_a_proxy_header(tmp_path, broker_process, certs):
    acl = tmp_path / "acl.conf"
    acl.write_text('{allow, {ipaddr, "203.0.113.0/24"}, publish, ["secret/#"]}.\n'
                   '{allow, {cert_common_name, "admin"}, publish, ["admin/#"]}.\n'
                   '{allow, all, all, ["witness/#"]}.\n')
    broker = broker_process(f"""
listeners.tcp.direct {{ bind = "127.0.0.1:0" }}
listeners.tcp.lb {{
  bind = "127.0.0.1:0"
  proxy_protocol = true
  proxy_protocol_trusted_cidrs = ["{BALANCER}/32", "2001:db8::/64"]
}}
listeners.ssl.lbtls {{
  bind = "127.0.0.1:0"
  proxy_protocol = true
  proxy_protocol_trusted_cidrs = ["{BALANCER}"]
  ssl_options {{ certfile = "{certs / 'server.crt'}", keyfile = "{certs / 'server.key'}" }}
}}
dashboard.listeners.http.bind = "127.0.0.1:0"
authorization {{
  no_match = deny
  file {{ enable = true, path = "{acl}" }}
}}
""")
    lb, lbtls = broker.port("tcp:lb"), broker.port("ssl:lbtls")
    forged_v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 1883\r\n"
    forged_tlv = proxy_v2_header("203.0.113.8", 40000, "admin")
    connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04evil"
    with PahoQos1Witness(broker.port("tcp:direct")) as witness:
        # A client that reaches the listeners directly: forged address (IP ACL grant), forged TLS identity (the
        # v2 SSL TLV's CN), on tcp and ahead of TLS; every one closed before a CONNACK or a ServerHello.
        for _ in range(20):
            assert await _closed_without_answer(lb, forged_v1 + connect)
            assert await _closed_without_answer(lb, forged_tlv + connect)
            assert await _closed_without_answer(lbtls, forged_tlv + b"\x16\x03\x01\x00\x05hello")
        # The balancer itself, with the same headers: believed.
        client = await WireClient.open(lb, proxy_header=forged_v1, source=BALANCER)
        try:
            assert (await client.connect("via-lb")).reason_code == 0
            ack = await client.publish("secret/plans", b"ok", qos=1)
            assert ack.type == PUBACK and ack.reason_code in (rc.SUCCESS, rc.NO_MATCHING_SUBSCRIBERS)
        finally:
            await client.close()
    assert witness.report["acked"] > 0 and witness.report["lost"] == 0, witness.report
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_proxy_protocol_refused_total", listener="tcp:lb", reason="untrusted_peer") == 40
    assert metric(text, "wharf_proxy_protocol_refused_total", listener="ssl:lbtls", reason="untrusted_peer") == 20
    assert metric(text, "wharf_listener_connections_refused_total", listener="tcp:lb", reason="proxy_protocol") == 40
    status, raw = broker.admin("GET", "/api/v5/clients")
    assert status == 200 and not [c for c in json.loads(raw)["data"] if c["clientid"] == "evil"]
    # Logged with the peer's address (rate-limited: at least the first of each listener).
    assert "closed a connection from 127.0.0.1:" in broker.log and "tcp:lb" in broker.log
