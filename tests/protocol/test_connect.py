"""CONNECT / CONNACK: reason codes, client-id rules, authentication hooks, take-over, timers."""

from __future__ import annotations

import asyncio

import pytest

from wharf_broker.auth import AuthResult
from wharf_broker.config.model import Authentication, BrokerConfig
from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT, Connect, Subscribe, SubOptions, Will

from tests.support.wire import WireClient


async def test_v5_empty_client_id_is_assigned(broker):
    client = await broker.raw(5)
    ack = await client.connect("")
    assert ack.reason_code == 0
    assigned = ack.properties["assigned_client_identifier"]
    assert assigned and assigned in broker.broker.channels
    await client.disconnect()


async def test_v311_empty_client_id_needs_clean_session(broker):
    client = await broker.raw(4)
    ack = await client.connect("", clean_start=True)
    assert ack.reason_code == 0 and not ack.session_present
    await client.disconnect()
    client = await broker.raw(4)
    ack = await client.connect("", clean_start=False)
    assert ack.reason_code == rc.V3_IDENTIFIER_REJECTED
    assert await client.closed() == []


async def test_mqtt_3_1_is_accepted(broker):
    client = await broker.raw(3)
    ack = await client.connect("old-client")
    assert ack.reason_code == 0
    await client.disconnect()


async def test_unsupported_protocol_version_gets_v3_connack(broker):
    client = await broker.raw(4)
    await client.send_raw(b"\x10\x0d\x00\x04MQTT\x07\x02\x00\x3c\x00\x01x")
    ack = await client.recv()
    assert ack.reason_code == rc.V3_UNACCEPTABLE_PROTOCOL_VERSION
    assert await client.closed() == []


async def test_client_id_too_long(make_broker):
    running = await make_broker(max_clientid_len=5)
    client = await running.raw(5)
    ack = await client.connect("much-too-long")
    assert ack.reason_code == rc.CLIENT_IDENTIFIER_NOT_VALID
    assert "reason_string" in ack.properties
    client = await running.raw(4)
    assert (await client.connect("much-too-long")).reason_code == rc.V3_IDENTIFIER_REJECTED


async def test_enhanced_authentication_is_refused_cleanly(broker):
    client = await broker.raw(5)
    ack = await client.connect("c", properties={"authentication_method": "SCRAM-SHA-1"})
    assert ack.reason_code == rc.BAD_AUTHENTICATION_METHOD
    assert await client.closed() == []


async def test_auth_packet_after_connect_is_a_protocol_error(broker):
    from wharf_broker.mqtt.packets import Auth
    client = await broker.client("c")
    await client.send(Auth(0x18))
    packets = await client.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.PROTOCOL_ERROR)]


async def test_will_checks_at_connect(make_broker):
    running = await make_broker(max_qos_allowed=1, retain_available=False)
    for will, code in [(Will("a/+", b"x"), rc.TOPIC_NAME_INVALID), (Will("a", b"x", qos=2), rc.QOS_NOT_SUPPORTED),
                       (Will("a", b"x", retain=True), rc.RETAIN_NOT_SUPPORTED),
                       (Will("a", b"\xff", properties={"payload_format_indicator": 1}),
                        rc.PAYLOAD_FORMAT_INVALID)]:
        client = await running.raw(5)
        assert (await client.connect("w", will=will)).reason_code == code
        await client.close()


class _Passwords:
    """A hook that knows one user and ignores everyone else."""

    def __init__(self) -> None:
        self.seen = []

    async def authenticate(self, info):
        self.seen.append(info)
        await asyncio.sleep(0.01)  # really asynchronous
        if info.username != "alice":
            return AuthResult.ignore()
        if info.password == b"secret":
            return AuthResult.allow()
        return AuthResult.deny(rc.BAD_USER_NAME_OR_PASSWORD, "wrong password")


@pytest.mark.parametrize("allow_anonymous", [True, False])
async def test_auth_hook_chain(make_broker, allow_anonymous):
    config = BrokerConfig(authentication=Authentication(allow_anonymous=allow_anonymous))
    running = await make_broker(config)
    hook = _Passwords()
    running.broker.auth.add(hook)

    good = await running.raw(5)
    # The client pipelines a SUBSCRIBE right behind its CONNECT: it must wait for the hook, not get lost.
    await good.send(Connect(5, "alice-1", username="alice", password=b"secret"))
    await good.send(Subscribe(1, [("a/b", SubOptions(0))]))
    assert (await good.recv()).reason_code == 0
    assert (await good.recv()).reason_codes == [0]
    info = hook.seen[-1]
    assert (info.client_id, info.username, info.listener_id, info.peer[0]) == ("alice-1", "alice", "tcp:default",
                                                                               "127.0.0.1")
    await good.disconnect()

    bad = await running.raw(5)
    ack = await bad.connect("alice-2", username="alice", password=b"nope")
    assert ack.reason_code == rc.BAD_USER_NAME_OR_PASSWORD and ack.properties["reason_string"] == "wrong password"
    old = await running.raw(4)
    assert (await old.connect("alice-3", username="alice", password=b"nope")).reason_code == \
        rc.V3_BAD_USERNAME_OR_PASSWORD

    # Nobody decided: allow_anonymous does.
    other = await running.raw(4)
    ack = await other.connect("bob", username="bob", password=b"x")
    expected = rc.V3_ACCEPTED if allow_anonymous else rc.V3_BAD_USERNAME_OR_PASSWORD
    assert ack.reason_code == expected
    anonymous = await running.raw(5)
    ack = await anonymous.connect("anon")
    assert ack.reason_code == (0 if allow_anonymous else rc.NOT_AUTHORIZED)
    for client in (other, anonymous):
        await client.close()


async def test_anonymous_refused_without_hooks(make_broker):
    running = await make_broker(BrokerConfig(authentication=Authentication(allow_anonymous=False)))
    client = await running.raw(4)
    assert (await client.connect("x")).reason_code == rc.V3_NOT_AUTHORIZED


async def test_auth_hook_failure_refuses_the_client_only(make_broker):
    running = await make_broker()

    class Broken:
        async def authenticate(self, info):
            raise RuntimeError("database down")

    running.broker.auth.add(Broken())
    client = await running.raw(5)
    assert (await client.connect("x")).reason_code == rc.UNSPECIFIED_ERROR
    assert await client.closed() == []


async def test_certificate_identity_maps_username_and_client_id(make_broker, monkeypatch):
    """With peer_cert_as_* set, the TLS layer's identity replaces username / client id."""
    import wharf_broker.auth as auth_module

    class Identity:
        tls_version, cipher, dn = "TLSv1.3", "TLS_AES_128_GCM_SHA256", "CN=device-7,O=Wharf"

        def as_identity(self, mode):
            return {"cn": "device-7", "dn": "CN=device-7,O=Wharf"}[mode]

    monkeypatch.setattr(auth_module, "_peer_identity_fn", lambda transport: Identity())
    running = await make_broker()
    running.listener.peer_cert_as_username = "dn"
    running.listener.peer_cert_as_clientid = "cn"
    hook = _Passwords()
    running.broker.auth.add(hook)
    client = await running.raw(5)
    assert (await client.connect("ignored", username="ignored")).reason_code == 0
    assert (hook.seen[-1].client_id, hook.seen[-1].username) == ("device-7", "CN=device-7,O=Wharf")
    assert "device-7" in running.broker.channels
    [listed] = running.broker.clients()
    assert listed["clientid"] == "device-7" and listed["username"] == "CN=device-7,O=Wharf"
    await client.disconnect()


async def test_session_take_over(broker):
    first = await broker.client("same", version=5)
    second = await broker.raw(5)
    ack = await second.connect("same", clean_start=False)
    assert ack.reason_code == 0
    packets = await first.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.SESSION_TAKEN_OVER)]
    assert broker.broker.channels["same"].connection is not None
    # The new connection works.
    assert (await second.ping()).type == 13
    # A 3.1.1 client taken over is just closed.
    old = await broker.client("v3", version=4)
    new = await broker.client("v3", version=4)
    assert await old.closed() == []
    await new.disconnect()
    await second.disconnect()


async def test_second_connect_is_a_protocol_error(broker):
    client = await broker.client("twice")
    await client.send(Connect(5, "twice"))
    packets = await client.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.PROTOCOL_ERROR)]


async def test_packet_before_connect_closes(broker):
    client = await broker.raw(4)
    await client.send_raw(b"\xc0\x00")  # PINGREQ first
    assert await client.closed() == []


async def test_idle_timeout_without_connect(make_broker, protocol_log):
    running = await make_broker(idle_timeout=0.3)
    client = await WireClient.open(running.port)
    assert await client.closed(timeout=5) == []
    assert "no CONNECT within the idle timeout" in protocol_log.text


async def test_keepalive_timeout(make_broker):
    running = await make_broker(keepalive_multiplier=0.5)
    client = await running.client("sleepy", keepalive=1)
    packets = await client.closed(timeout=5)
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.KEEP_ALIVE_TIMEOUT)]


async def test_keepalive_kept_by_pings(make_broker):
    running = await make_broker()  # 1.5 x keep-alive
    client = await running.client("awake", keepalive=1)
    for _ in range(8):  # 2 s of pings: longer than the 1.5 s limit
        await asyncio.sleep(0.25)
        assert (await client.ping()).type == 13
    assert "awake" in running.broker.channels
    await client.disconnect()


async def test_server_keepalive(make_broker):
    running = await make_broker(server_keepalive=1, keepalive_multiplier=0.5)
    client = await running.raw(5)
    ack = await client.connect("srv-ka", keepalive=600)
    assert ack.properties["server_keep_alive"] == 1
    packets = await client.closed(timeout=5)
    assert [p.reason_code for p in packets] == [rc.KEEP_ALIVE_TIMEOUT]


async def test_connack_announces_limits(make_broker):
    running = await make_broker(max_qos_allowed=1, retain_available=False, wildcard_subscription=False,
                                shared_subscription=False, max_topic_alias=10, max_awaiting_rel=7,
                                response_information="replies/", session_expiry_interval=60)
    client = await running.raw(5)
    ack = await client.connect("limits", properties={"request_response_information": 1,
                                                     "session_expiry_interval": 3600})
    props = ack.properties
    assert props["maximum_qos"] == 1 and props["retain_available"] == 0
    assert props["wildcard_subscription_available"] == 0 and props["shared_subscription_available"] == 0
    assert props["topic_alias_maximum"] == 10 and props["receive_maximum"] == 7
    assert props["maximum_packet_size"] == 1024 * 1024
    assert props["response_information"] == "replies/"
    assert props["session_expiry_interval"] == 60  # capped
    await client.disconnect()


async def test_clients_listing(broker):
    client = await broker.client("listed", version=4, username="u1")
    [info] = broker.broker.clients()
    assert info["clientid"] == "listed" and info["username"] == "u1" and info["proto_ver"] == 4
    assert info["listener"] == "tcp:default" and info["peer"].startswith("127.0.0.1:")
    assert info["connected_at"] > 0
    assert "tls_version" not in info  # plain TCP
    await client.disconnect()
