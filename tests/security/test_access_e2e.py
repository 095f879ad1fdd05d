"""Authentication and authorization end to end, against a real broker process: password file, ACL file,
CONNACK / PUBACK / SUBACK codes for 5.0 and 3.1.1, live reload (digest interval and SIGHUP), metrics, and
logs that never show a password."""

from __future__ import annotations

import signal

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import PUBACK, PUBLISH, PUBREC

from tests.support import eventually

from .conftest import add_user, metric
from tests.support.wire import WireClient, connack_code

ACL = """
{allow, all, all, ["users/${username}/#"]}.
{allow, {username, "bob"}, subscribe, ["users/+/inbox"]}.
{deny, all}.
"""


def config(users, acl, interval="200ms") -> str:
    return f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
authentication {{
  allow_anonymous = false
  password_file {{ enable = true, path = "{users}", reload_interval = {interval} }}
}}
authorization {{
  no_match = deny
  file {{ enable = true, path = "{acl}", reload_interval = {interval} }}
}}
"""





async def test_connect_refusals_and_codes(tmp_path, broker_process, user_file):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL)
    broker = broker_process(config(user_file, acl))
    port = broker.port("tcp:default")
    assert await connack_code(port, "a1", username="alice", password=b"wonderland") == rc.SUCCESS
    assert await connack_code(port, "a2", username="alice", password=b"wrong") == rc.BAD_USER_NAME_OR_PASSWORD
    assert await connack_code(port, "a3", username="nobody", password=b"x") == rc.BAD_USER_NAME_OR_PASSWORD
    assert await connack_code(port, "a4") == rc.NOT_AUTHORIZED  # anonymous is off
    assert await connack_code(port, "a5", version=4, username="alice", password=b"wrong") == 4
    assert await connack_code(port, "a6", version=4) == 5
    assert await connack_code(port, "a7", version=4, username="bob", password=b"builder") == 0
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_authn_total", result="allow") == 2
    assert metric(text, "wharf_authn_total", result="deny") == 5
    assert "wonderland" not in broker.log and "wrong" not in broker.log


async def test_publish_and_subscribe_acl(tmp_path, broker_process, user_file):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL)
    broker = broker_process(config(user_file, acl))
    port = broker.port("tcp:default")
    alice = await WireClient.open(port)
    await alice.connect("alice-1", username="alice", password=b"wonderland")
    bob = await WireClient.open(port)
    await bob.connect("bob-1", username="bob", password=b"builder")
    bob3 = await WireClient.open(port, version=4)
    await bob3.connect("bob-3", username="bob", password=b"builder")
    try:
        suback = await alice.subscribe("users/alice/#", "#", "users/+/inbox", qos=1)
        assert suback.reason_codes == [1, rc.NOT_AUTHORIZED, rc.NOT_AUTHORIZED]
        assert (await bob.subscribe("users/+/inbox", qos=1)).reason_codes == [1]
        assert (await bob3.subscribe("users/alice/#", "users/bob/#", qos=1)).reason_codes == [0x80, 1]

        # Allowed: alice to her own topics (bob reads inboxes).
        ack = await alice.publish("users/alice/inbox", b"hello", qos=1)
        assert ack.type == PUBACK and ack.reason_code == rc.SUCCESS
        delivered = await bob.recv()
        assert delivered.type == PUBLISH and delivered.topic == "users/alice/inbox"
        await bob.ack(delivered)
        own = await alice.recv()
        assert own.type == PUBLISH and own.payload == b"hello"
        await alice.ack(own)

        # Refused, 5.0: the reason code in PUBACK and PUBREC; nothing delivered.
        ack = await alice.publish("users/bob/inbox", b"forged", qos=1)
        assert ack.type == PUBACK and ack.reason_code == rc.NOT_AUTHORIZED
        rec = await alice.publish("users/bob/inbox", b"forged", qos=2)
        assert rec.type == PUBREC and rec.reason_code == rc.NOT_AUTHORIZED
        # Refused, 3.1.1: acknowledged (it cannot hear a refusal) and dropped.
        ack = await bob3.publish("users/alice/inbox", b"forged", qos=1)
        assert ack.type == PUBACK
        await bob3.publish("users/alice/inbox", b"forged", qos=0)
        try:
            packet = await bob.recv(timeout=0.5)
        except TimeoutError:
            packet = None
        assert packet is None, f"a refused message was delivered: {packet!r}"
        _, body = broker.admin("GET", "/metrics")
        text = body.decode()
        assert metric(text, "wharf_authz_denied_total", action="publish") == 4
        assert metric(text, "wharf_authz_denied_total", action="subscribe") == 3
        assert metric(text, "wharf_messages_dropped_total", reason="not_authorized") == 4

        # Live reload: the ACL now lets alice write to bob's inbox, on the same connection.
        acl.write_text('{allow, {username, "alice"}, publish, ["users/bob/inbox"]}.\n' + ACL)

        async def reloaded():
            ack = await alice.publish("users/bob/inbox", b"now allowed", qos=1)
            return ack.reason_code == rc.SUCCESS
        assert await eventually(reloaded, "the reloaded ACL", timeout=10.0, interval=0.1)
        delivered = await bob.recv()
        assert delivered.topic == "users/bob/inbox"
    finally:
        for client in (alice, bob, bob3):
            await client.close()


async def test_users_reload_live_and_on_sighup(tmp_path, broker_process, user_file):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL)
    broker = broker_process(config(user_file, acl, interval="1h"))
    port = broker.port("tcp:default")
    add_user(user_file, "carol", "secret-c")
    assert await connack_code(port, "c1", username="carol", password=b"secret-c") == rc.BAD_USER_NAME_OR_PASSWORD
    broker.send_signal(signal.SIGHUP)

    async def carol_in():
        return await connack_code(port, "c1", username="carol", password=b"secret-c") == rc.SUCCESS
    assert await eventually(carol_in, "carol let in", timeout=10.0, interval=0.1)
    # A broken file is refused whole: everyone who could connect still can.
    user_file.write_text(user_file.read_text() + "dave:plaintext-password\n")
    broker.send_signal(signal.SIGHUP)
    broker.wait_for_log("not reloaded")
    assert await connack_code(port, "c2", username="carol", password=b"secret-c") == rc.SUCCESS
    assert "plaintext-password" not in broker.log


async def test_flapping_client_is_banned(broker_process):
    broker = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0" }
dashboard.listeners.http.bind = "127.0.0.1:0"
flapping_detect { enable = true, max_count = 4, window_time = 1m, ban_time = 1m }
""")
    port = broker.port("tcp:default")
    codes = [await connack_code(port, "flappy") for _ in range(6)]
    assert codes == [0, 0, 0, rc.BANNED, rc.BANNED, rc.BANNED]
    assert await connack_code(port, "flappy", version=4) == 5  # 3.1.1: not authorized
    assert await connack_code(port, "steady") == 0  # others are not affected
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_flapping_banned_total", key="clientid") == 1
    assert metric(text, "wharf_flapping_refused_total") == 3
    assert metric(text, "wharf_authn_total", result="banned") == 4
