"""Tenants stay apart, sessions belong to their owner (docs/security.md, "Tenancy"), attacked over raw sockets
against a real broker process while a well-behaved QoS 1 client publishes to a QoS 1 subscriber the whole time
(it must lose nothing):

1. mountpoint escape: a client id / user name ``+``, ``#``, ``a/b`` or an empty one under
   ``tenants/${clientid}/`` / ``tenants/${username}/`` is refused at CONNECT;
2. session hijack: another identity presenting a client id gets a fresh session of its own (``discard``), is
   refused (``refuse``), or inherits it but receives only what its own ACL lets it read (``off``); it never kicks
   the owner off (``discard`` / ``refuse``) nor wipes the owner's queue;
3. deny rules and overlapping filters: ``+/status`` (plain and shared) granted next to a deny of ``secret/#``
   never delivers ``secret/status``, live or retained.

Absence of a message is shown with a sentinel, not a timeout: a later message from the same publisher to the
same subscriber arrives after anything published before it.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time

import pytest
from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import PUBACK, PUBLISH, Publish, SubOptions, Subscribe

from .conftest import add_user, metric
from tests.support.wire import WireClient
from .test_attacks import WellBehaved


class GoodClient(WellBehaved):
    """The attack tests' well-behaved QoS 1 pair, with credentials and a topic of its own."""

    def __init__(self, port: int, topic: str = "good/stream", **credentials) -> None:
        super().__init__(port)
        self.topic = topic
        self.credentials = credentials

    async def start(self) -> None:
        self.subscriber = await WireClient.open(self.port)
        assert (await self.subscriber.connect("good-sub", keepalive=30, **self.credentials)).reason_code == 0
        assert (await self.subscriber.subscribe(self.topic, qos=1)).reason_codes == [1]
        self.publisher = await WireClient.open(self.port)
        assert (await self.publisher.connect("good-pub", keepalive=30, **self.credentials)).reason_code == 0
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publish()), loop.create_task(self._consume())]

    async def _publish(self) -> None:
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            ack = await self.publisher.publish(self.topic, sequence.to_bytes(8, "big"), qos=1)
            if ack.type != PUBACK or ack.reason_code >= 0x80:
                self.refused += 1
            else:
                self.acked = sequence
            await asyncio.sleep(0.005)


def assert_nothing_lost(report: dict) -> None:
    assert report["published_acked"] > 0, report
    assert report["lost"] == 0 and report["refused"] == 0, report


async def receive_until(client: WireClient, payload: bytes) -> list:
    """The PUBLISH packets ``client`` receives up to and including the one carrying ``payload`` (acked)."""
    got = []
    while True:
        packet = await client.recv(timeout=10)
        if packet.type != PUBLISH:
            continue
        await client.ack(packet)
        got.append(packet)
        if packet.payload == payload:
            return got


async def persistent(port: int, client_id: str, version: int = 5, **credentials):
    """A connection asking to resume ``client_id``'s session (5.0: expiry 600 s); returns (client, CONNACK)."""
    client = await WireClient.open(port, version)
    fields = {"clean_start": False}
    if version == 5:
        fields["properties"] = {"session_expiry_interval": 600}
    return client, await client.connect(client_id, **credentials, **fields)


# ----------------------------------------------------------------------------------- 1. mountpoint escape

MOUNTED = """
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
listeners.tcp.byid {{ bind = "127.0.0.1:0", mountpoint = "tenants/${{clientid}}/" }}
listeners.tcp.byuser {{ bind = "127.0.0.1:0", mountpoint = "tenants/${{username}}/" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
"""


async def test_placeholder_values_never_widen_a_mountpoint(broker_process):
    broker = broker_process(MOUNTED.format())
    by_id, by_user = broker.port("tcp:byid"), broker.port("tcp:byuser")
    good = GoodClient(broker.port("tcp:default"))
    await good.start()
    # The victim tenant, on its own mounted topic (tenants/victim/data inside the broker).
    victim = await WireClient.open(by_id)
    assert (await victim.connect("victim")).reason_code == 0
    assert (await victim.subscribe("data", qos=1)).reason_codes == [1]

    codes = {}
    for client_id in ("+", "#", "+/+", "a/b", "victim/x", "x+y"):
        for version in (5, 4):
            attacker = await WireClient.open(by_id, version)
            ack = await attacker.connect(client_id)
            codes[(client_id, version)] = ack.reason_code
            if ack.reason_code == 0:  # today's broker: the attacker is in and listens to every tenant
                await attacker.subscribe("#", qos=1)
                await victim.publish("data", b"tenant secret", qos=1)
            await attacker.close()
    for username in ("+", "#", "a/b", "", None):
        attacker = await WireClient.open(by_user)
        codes[("user", username)] = (await attacker.connect("u-attacker", username=username)).reason_code
        await attacker.close()
    assert {key: code for key, code in codes.items() if key[0] != "user"} == {
        (client_id, version): rc.CLIENT_IDENTIFIER_NOT_VALID if version == 5 else 2
        for client_id in ("+", "#", "+/+", "a/b", "victim/x", "x+y") for version in (5, 4)}
    assert {key: code for key, code in codes.items() if key[0] == "user"} == {
        ("user", name): rc.NOT_AUTHORIZED for name in ("+", "#", "a/b", "", None)}

    # Well-formed values still work and stay apart: a tenant subscribing '#' sees only its own topics.
    other = await WireClient.open(by_id)
    assert (await other.connect("other")).reason_code == 0
    assert (await other.subscribe("#", qos=1)).reason_codes == [1]
    await victim.publish("data", b"victim only", qos=1)
    assert [p.payload for p in await receive_until(victim, b"victim only")] == [b"victim only"]
    await other.publish("mine", b"sentinel", qos=1)
    assert [(p.topic, p.payload) for p in await receive_until(other, b"sentinel")] == [("mine", b"sentinel")]
    named = await WireClient.open(by_user)
    assert (await named.connect("n1", username="carol")).reason_code == 0
    await named.close()
    await victim.close()
    await other.close()

    assert_nothing_lost(await good.stop())
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_mountpoint_refused_total", placeholder="clientid") == 12
    assert metric(text, "wharf_mountpoint_refused_total", placeholder="username") == 5


# ----------------------------------------------------------------------------------- 2. session hijack

ACL_OWN = """
{allow, all, all, ["users/${username}/#"]}.
{deny, all}.
"""


def authenticated(users, acl, mode: str | None) -> str:
    check = f"mqtt.session_owner_check = {mode}" if mode else ""
    return f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
authentication {{
  allow_anonymous = false
  password_file {{ enable = true, path = "{users}" }}
}}
authorization {{
  no_match = deny
  file {{ enable = true, path = "{acl}" }}
}}
{check}
"""


ALICE = {"username": "alice", "password": b"wonderland"}
BOB = {"username": "bob", "password": b"builder"}


async def bob_sees_nothing_of_alice(bob: WireClient, marker: bytes) -> None:
    """Bob's first message is his own sentinel: nothing of Alice's came before it."""
    assert (await bob.subscribe("users/bob/#", qos=1)).reason_codes == [1]
    await bob.publish("users/bob/sentinel", marker, qos=1)
    got = await receive_until(bob, marker)
    assert [(p.topic, p.payload) for p in got] == [("users/bob/sentinel", marker)]


@pytest.mark.parametrize("mode", [None, "discard"])
async def test_another_identity_gets_a_fresh_session_and_leaves_the_owners_alone(tmp_path, broker_process,
                                                                               user_file, mode):
    add_user(user_file, "carol", "good")
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL_OWN)
    broker = broker_process(authenticated(user_file, acl, mode))  # discard is the default
    port = broker.port("tcp:default")
    good = GoodClient(port, "users/carol/stream", username="carol", password=b"good")
    await good.start()

    alice, ack = await persistent(port, "alice-dev", **ALICE)
    assert ack.reason_code == 0 and not ack.session_present
    assert (await alice.subscribe("users/alice/#", qos=1)).reason_codes == [1]
    await alice.close()
    feed = await WireClient.open(port)
    await feed.connect("alice-feed", **ALICE)
    assert (await feed.publish("users/alice/inbox", b"queued-1", qos=1)).reason_code == 0

    # Bob, with his own good password, asks for Alice's session: a fresh one, nothing of hers.
    bob, ack = await persistent(port, "alice-dev", **BOB)
    assert ack.reason_code == 0 and not ack.session_present
    assert ack.properties.get("session_expiry_interval") == 0  # his ends with his connection
    assert (await feed.publish("users/alice/inbox", b"live-1", qos=1)).reason_code == 0
    await bob_sees_nothing_of_alice(bob, b"b1")
    await bob.close()
    # A clean start from Bob does not wipe her session either.
    bob = await WireClient.open(port)
    assert (await bob.connect("alice-dev", clean_start=True, **BOB)).reason_code == 0
    await bob.close()

    # Alice's session is intact: both messages are waiting for her.
    alice, ack = await persistent(port, "alice-dev", **ALICE)
    assert ack.reason_code == 0 and ack.session_present
    assert [p.payload for p in await receive_until(alice, b"live-1")] == [b"queued-1", b"live-1"]

    # While Alice is connected Bob cannot kick her off: he gets his own session, she keeps hers.
    bob, ack = await persistent(port, "alice-dev", version=4, **BOB)
    assert ack.reason_code == 0 and not ack.session_present
    assert (await feed.publish("users/alice/inbox", b"live-2", qos=1)).reason_code == 0
    assert [p.payload for p in await receive_until(alice, b"live-2")] == [b"live-2"]
    await bob_sees_nothing_of_alice(bob, b"b2")
    await bob.close()
    assert (await alice.ping()).type == 13
    for client in (alice, feed):
        await client.close()

    assert_nothing_lost(await good.stop())
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_session_owner_mismatch_total", action="discard") == 3
    assert "wonderland" not in broker.log and "builder" not in broker.log
    assert "the session belongs to user:'alice'" in broker.log


async def test_refuse_mode_refuses_another_identity(tmp_path, broker_process, user_file):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL_OWN)
    add_user(user_file, "carol", "good")
    broker = broker_process(authenticated(user_file, acl, "refuse"))
    port = broker.port("tcp:default")
    good = GoodClient(port, "users/carol/stream", username="carol", password=b"good")
    await good.start()
    alice, ack = await persistent(port, "alice-dev", **ALICE)
    assert (await alice.subscribe("users/alice/#", qos=1)).reason_codes == [1]
    for version, expected in ((5, rc.CLIENT_IDENTIFIER_NOT_VALID), (4, 2)):
        bob, ack = await persistent(port, "alice-dev", version=version, **BOB)
        assert ack.reason_code == expected and not ack.session_present
        await bob.close()
    # Alice was not kicked and still gets her messages.
    feed = await WireClient.open(port)
    await feed.connect("alice-feed", **ALICE)
    assert (await feed.publish("users/alice/inbox", b"still-mine", qos=1)).reason_code == 0
    assert [p.payload for p in await receive_until(alice, b"still-mine")] == [b"still-mine"]
    # The owner herself resumes as always.
    await alice.close()
    alice, ack = await persistent(port, "alice-dev", **ALICE)
    assert ack.reason_code == 0 and ack.session_present
    for client in (alice, feed):
        await client.close()
    assert_nothing_lost(await good.stop())
    _, body = broker.admin("GET", "/metrics")
    assert metric(body.decode(), "wharf_session_owner_mismatch_total", action="refuse") == 2


async def test_off_mode_inherits_but_delivers_only_what_the_new_identity_may_read(tmp_path, broker_process,
                                                                                  user_file):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL_OWN)
    add_user(user_file, "carol", "good")
    broker = broker_process(authenticated(user_file, acl, "off"))
    port = broker.port("tcp:default")
    good = GoodClient(port, "users/carol/stream", username="carol", password=b"good")
    await good.start()
    alice, ack = await persistent(port, "alice-dev", **ALICE)
    assert (await alice.subscribe("users/alice/#", qos=1)).reason_codes == [1]
    await alice.close()
    feed = await WireClient.open(port)
    await feed.connect("alice-feed", **ALICE)
    assert (await feed.publish("users/alice/inbox", b"queued-1", qos=1)).reason_code == 0
    bob, ack = await persistent(port, "alice-dev", **BOB)
    assert ack.reason_code == 0 and ack.session_present  # off: MQTT's plain behaviour
    # Nobody may read it now: "no matching subscribers".
    assert (await feed.publish("users/alice/inbox", b"live-1", qos=1)).reason_code == rc.NO_MATCHING_SUBSCRIBERS
    await bob_sees_nothing_of_alice(bob, b"b1")  # neither the queued message nor the live one
    for client in (bob, feed):
        await client.close()
    assert_nothing_lost(await good.stop())
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_session_owner_mismatch_total", action="off") == 1
    assert metric(text, "wharf_authz_denied_total", action="deliver") >= 1


# ----------------------------------------------------------------------------------- 3. deny + overlap

ACL_OVERLAP = """
{deny, all, subscribe, ["secret/#"]}.
{allow, all, subscribe, ["+/status", "good/#"]}.
{allow, all, publish, ["#"]}.
"""


async def test_deny_rule_wins_over_an_overlapping_granted_filter(tmp_path, broker_process):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL_OVERLAP)
    broker = broker_process(f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
authorization {{
  no_match = deny
  file {{ enable = true, path = "{acl}" }}
}}
""")
    port = broker.port("tcp:default")
    good = GoodClient(port)
    await good.start()
    publisher = await WireClient.open(port)
    await publisher.connect("publisher")
    for topic in ("secret/status", "public/status"):
        await publisher.send(Publish(topic, b"retained " + topic.encode(), 1, True, False, publisher.packet_id()))
        assert (await publisher.recv()).type == PUBACK

    plain = await WireClient.open(port)
    await plain.connect("plain")
    assert (await plain.subscribe("+/status", qos=1)).reason_codes == [1]  # granted: it overlaps, not covered
    shared = await WireClient.open(port, version=4)
    await shared.connect("shared")
    await shared.send(Subscribe(shared.packet_id(), [("$share/g/+/status", SubOptions(1))], None))
    assert (await shared.recv()).reason_codes == [1]
    denied = await WireClient.open(port)
    await denied.connect("denied")
    assert (await denied.subscribe("secret/status", qos=1)).reason_codes == [rc.NOT_AUTHORIZED]

    # Nobody may read it: "no matching subscribers" (today's broker delivered it to both).
    assert (await publisher.publish("secret/status", b"live secret", qos=1)).reason_code == rc.NO_MATCHING_SUBSCRIBERS
    assert (await publisher.publish("public/status", b"live public", qos=1)).reason_code == 0
    got = await receive_until(plain, b"live public")
    assert [(p.topic, p.payload, p.retain) for p in got] == [
        ("public/status", b"retained public/status", True), ("public/status", b"live public", False)]
    got = await receive_until(shared, b"live public")
    assert [(p.topic, p.payload) for p in got] == [("public/status", b"live public")]
    for client in (publisher, plain, shared, denied):
        await client.close()

    assert_nothing_lost(await good.stop())
    _, body = broker.admin("GET", "/metrics")
    # The retained secret to the plain subscriber, the live one to each.
    assert metric(body.decode(), "wharf_authz_denied_total", action="deliver") == 3


async def test_a_deny_rule_added_by_a_reload_covers_existing_subscriptions(tmp_path, broker_process):
    acl = tmp_path / "acl.conf"
    acl.write_text('{allow, all, subscribe, ["+/status"]}.\n{allow, all, publish, ["#"]}.\n')
    broker = broker_process(f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
authorization {{
  no_match = deny
  file {{ enable = true, path = "{acl}", reload_interval = 0s }}
}}
""")
    port = broker.port("tcp:default")
    publisher = await WireClient.open(port)
    await publisher.connect("publisher")
    online = await WireClient.open(port)
    await online.connect("online")
    assert (await online.subscribe("+/status", qos=1)).reason_codes == [1]
    offline, ack = await persistent(port, "offline")
    assert (await offline.subscribe("+/status", qos=1)).reason_codes == [1]
    await offline.close()
    assert (await publisher.publish("secret/status", b"before", qos=1)).reason_code == 0
    assert [p.payload for p in await receive_until(online, b"before")] == [b"before"]

    acl.write_text(ACL_OVERLAP)
    mark = len(broker.log)
    broker.send_signal(signal.SIGHUP)
    broker.wait_for_log(r"ACL file .*: 3 rules", start=mark)
    # Neither the connected subscriber nor the offline session may read it any more.
    assert (await publisher.publish("secret/status", b"after", qos=1)).reason_code == rc.NO_MATCHING_SUBSCRIBERS
    assert (await publisher.publish("public/status", b"public", qos=1)).reason_code == 0
    assert [p.payload for p in await receive_until(online, b"public")] == [b"public"]
    offline, ack = await persistent(port, "offline")
    assert ack.session_present
    assert [p.payload for p in await receive_until(offline, b"public")] == [b"before", b"public"]
    for client in (publisher, online, offline):
        await client.close()


needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
                                     reason="mosquitto clients not installed")


def sub_until_published(sub_args: list[str], pub_args: list[str], timeout: float = 15.0) -> str:
    """Run ``mosquitto_sub`` (which exits after one message) while ``mosquitto_pub`` publishes until it has."""
    sub = subprocess.Popen(["mosquitto_sub", *sub_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", *pub_args], check=True, timeout=10)
            time.sleep(0.2)
        out, _ = sub.communicate(timeout=5)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    return out.decode()


@needs_mosquitto
async def test_real_clients_cannot_escape_a_mountpoint_or_take_a_session(tmp_path, broker_process, user_file):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL_OWN)
    broker = broker_process(MOUNTED.format() + f"""
authentication {{ allow_anonymous = true, password_file {{ enable = true, path = "{user_file}" }} }}
authorization {{ no_match = allow, file {{ enable = true, path = "{acl}" }} }}
""")
    by_id, port = str(broker.port("tcp:byid")), str(broker.port("tcp:default"))
    for version, refusal in (("mqttv311", "identifier rejected"), ("mqttv5", "client identifier not valid")):
        run = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", by_id, "-V", version, "-i", "+", "-t", "#",
                              "-C", "1", "-W", "5"], capture_output=True, timeout=20)
        assert run.returncode != 0 and refusal in (run.stdout + run.stderr).decode().lower(), run

    alice = ["-h", "127.0.0.1", "-p", port, "-u", "alice", "-P", "wonderland"]
    bob = ["-h", "127.0.0.1", "-p", port, "-u", "bob", "-P", "builder"]
    persistent_sub = ["-V", "mqttv5", "-c", "-x", "600", "-i", "alice-dev", "-q", "1", "-C", "1", "-W", "15"]
    subprocess.run(["mosquitto_sub", *alice, *persistent_sub, "-t", "users/alice/#", "-W", "1"], timeout=20)
    subprocess.run(["mosquitto_pub", *alice, "-q", "1", "-t", "users/alice/inbox", "-m", "queued-1"], check=True,
                   timeout=10)
    # Bob with Alice's client id: his own message comes first, nothing of hers.
    out = sub_until_published([*bob, *persistent_sub, "-t", "users/bob/#"],
                              [*bob, "-q", "1", "-t", "users/bob/x", "-m", "bob-msg"])
    assert out.splitlines() == ["bob-msg"], out
    # Alice gets her queued message.
    out = sub_until_published([*alice, *persistent_sub, "-t", "users/alice/#"],
                              [*alice, "-q", "1", "-t", "users/alice/other", "-m", "later"])
    assert out.splitlines()[0] == "queued-1", out
