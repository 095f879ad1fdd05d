"""Durable broker state across real restarts: a broker process with ``durable_storage`` on is killed (SIGKILL)
or stopped (SIGTERM) and started again on the same data directory. Every message whose PUBACK/PUBREC the
publisher received must arrive (QoS 2: exactly once), and sessions, subscriptions, retained messages and
delayed wills come back."""

from __future__ import annotations

import asyncio
import collections
import signal

import pytest

from wharf_broker.mqtt.packets import PUBACK, PUBLISH, PUBREL, Connect, PubAck, Publish, Will

from tests.support.wire import WireClient

from .durable_support import EXPIRY, SUBSCRIBER, burst, committed, drain, durable_config, subscribe_offline

pytestmark = pytest.mark.slow


async def _kill_mid_burst(broker, count: int, kill_after: int, signum: int, version: int = 5) -> dict:
    acked: dict = {}
    task = asyncio.ensure_future(burst(broker.port("tcp:default"), count, acked, version=version))
    while len(acked) < kill_after and not task.done():
        await asyncio.sleep(0.01)
    status = broker.stop(signum)
    await task
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 0), broker.log
    return acked


def _check_delivered(acked: dict, received: list) -> None:
    counts = collections.Counter(packet.payload for packet in received)
    missing = [payload for payload in acked if payload not in counts]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    twice = [payload for payload, n in counts.items() if n > 1 and payload.startswith(b"2:")]
    assert not twice, f"QoS 2 messages delivered more than once: {twice[:3]}"
    for packet in received:
        assert packet.qos == int(packet.payload[:1]), packet


@pytest.mark.parametrize("signum,version", [(signal.SIGKILL, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 4)],
                         ids=["sigkill", "sigterm", "sigkill-mqtt311"])
async def test_acknowledged_messages_survive_a_restart_in_the_middle_of_a_burst(broker_process, tmp_path, signum,
                                                                                version):
    config = durable_config(tmp_path / "data")
    broker = broker_process(config)
    await subscribe_offline(broker.port("tcp:default"), version=version)
    acked = await _kill_mid_burst(broker, 3000, 400, signum, version)
    assert len(acked) >= 400

    restarted = broker_process(config)
    assert "1 sessions" in restarted.log
    received = await drain(restarted.port("tcp:default"), version=version)
    _check_delivered(acked, received)
    assert {1, 2} <= set(acked.values())


async def test_inflight_state_and_packet_ids_survive_sigkill(broker_process, tmp_path):
    """A QoS 2 message the subscriber PUBREC'd is released (PUBREL, same packet id) after the restart, never
    sent again; an unacknowledged QoS 1 message is resent with its packet id and DUP."""
    config = durable_config(tmp_path / "data")
    broker = broker_process(config)
    port = broker.port("tcp:default")
    sub = await WireClient.open(port)
    assert (await sub.connect("inflight-sub", expiry=EXPIRY)).reason_code == 0
    assert (await sub.subscribe("f/#", qos=2)).reason_codes == [2]
    pub = await WireClient.open(port)
    assert (await pub.connect("inflight-pub")).reason_code == 0
    await pub.send(Publish("f/two", b"exactly-once", 2, packet_id=7))
    assert (await pub.recv()).type == 5  # PUBREC: on disk
    await pub.send(Publish("f/one", b"at-least-once", 1, packet_id=8))
    assert (await pub.recv()).type == 4
    first = await sub.recv()
    second = await sub.recv()
    by_payload = {first.payload: first, second.payload: second}
    two, one = by_payload[b"exactly-once"], by_payload[b"at-least-once"]
    before = await committed(broker, 0)
    await sub.send(PubAck(5, two.packet_id))  # PUBREC
    assert (await sub.recv()).type == PUBREL
    await committed(broker, before)  # the PUBREC is on disk
    broker.stop(signal.SIGKILL)

    restarted = broker_process(config)
    sub = await WireClient.open(restarted.port("tcp:default"))
    ack = await sub.connect("inflight-sub", clean_start=False, expiry=EXPIRY)
    assert ack.reason_code == 0, ack
    assert ack.session_present
    packets = [await sub.recv(), await sub.recv()]
    kinds = {packet.type: packet for packet in packets}
    assert kinds[PUBREL].packet_id == two.packet_id
    resent = kinds[PUBLISH]
    assert (resent.payload, resent.packet_id, resent.dup) == (b"at-least-once", one.packet_id, True)
    sub.drop()


async def test_sessions_subscription_options_and_retained_messages_survive_sigterm(broker_process, tmp_path):
    config = durable_config(tmp_path / "data")
    broker = broker_process(config)
    port = broker.port("tcp:default")
    await subscribe_offline(port, "opts/#", qos=1, sub_id=42, client_id="opts-sub")
    pub = await WireClient.open(port)
    assert (await pub.connect("retainer")).reason_code == 0
    props = {"content_type": "text/plain", "user_property": [("k", "v")], "message_expiry_interval": 3600,
             "correlation_data": b"\x00\x01"}
    await pub.send(Publish("opts/kept", b"retained-value", 1, True, packet_id=1, properties=props))
    assert (await pub.recv()).reason_code == 0
    pub.drop()
    assert broker.stop(signal.SIGTERM) == 0

    restarted = broker_process(config)
    received = await drain(restarted.port("tcp:default"), "opts-sub", quiet=1.0)
    assert [p.payload for p in received] == [b"retained-value"]
    delivered = received[0]
    assert delivered.properties["subscription_identifier"] == [42]  # the subscription identifier was kept
    assert delivered.properties["content_type"] == "text/plain"
    assert delivered.properties["correlation_data"] == b"\x00\x01"
    assert 3500 < delivered.properties["message_expiry_interval"] <= 3600

    # The retained message itself, to a new subscriber.
    fresh = await WireClient.open(restarted.port("tcp:default"))
    assert (await fresh.connect("fresh")).reason_code == 0
    assert (await fresh.subscribe("opts/kept", qos=1)).reason_codes == [1]
    retained = await fresh.recv()
    assert (retained.payload, retained.retain) == (b"retained-value", True)
    assert retained.properties["user_property"] == [("k", "v")]
    fresh.drop()


async def test_a_delayed_will_fires_after_the_restart_unless_the_client_came_back(broker_process, tmp_path):
    config = durable_config(tmp_path / "data")
    broker = broker_process(config)
    port = broker.port("tcp:default")
    await subscribe_offline(port, "wills/#", qos=1, client_id="will-watcher")
    before = await committed(broker, 0)
    for client_id in ("leaves", "returns"):
        client = await WireClient.open(port)
        will = Will(f"wills/{client_id}", client_id.encode(), 1, False, {"will_delay_interval": 4})
        assert (await client.connect(client_id, expiry=EXPIRY, will=will)).reason_code == 0
        client.drop()  # gone without DISCONNECT: the will is due in 4 s
    # Each connection wrote its session when it came and its session and will when it went.
    await committed(broker, before + 5)
    broker.stop(signal.SIGKILL)

    restarted = broker_process(config)
    port = restarted.port("tcp:default")
    back = await WireClient.open(port)
    ack = await back.connect("returns", clean_start=False, expiry=EXPIRY)
    assert ack.reason_code == 0, ack
    assert ack.session_present
    await asyncio.sleep(4.5)  # past the will delay
    received = await drain(port, "will-watcher", quiet=1.0)
    assert [p.payload for p in received] == [b"leaves"]
    back.drop()


async def test_two_brokers_never_share_a_data_directory(broker_process, tmp_path):
    config = durable_config(tmp_path / "data")
    broker_process(config)
    with pytest.raises(AssertionError, match="is in use by another broker process"):
        broker_process(config)


async def test_a_session_still_belongs_to_its_owner_after_a_restart(broker_process, tmp_path):
    """The owner identity is kept with the session: after SIGKILL another identity asking for the same client id
    gets a fresh session of its own (session_owner_check = discard), and the owner still gets what was queued."""
    config = durable_config(tmp_path / "data")
    broker = broker_process(config)
    port = broker.port("tcp:default")
    owner = await WireClient.open(port)
    await owner.send(Connect(version=5, client_id="owned", clean_start=True, username="alice",
                             properties={"session_expiry_interval": EXPIRY}))
    assert (await owner.recv()).reason_code == 0
    assert (await owner.subscribe("owned/#", qos=1)).reason_codes == [1]
    owner.drop()
    pub = await WireClient.open(port)
    assert (await pub.connect("owned-pub")).reason_code == 0
    await pub.send(Publish("owned/x", b"for alice", 1, packet_id=1))
    assert (await pub.recv()).type == 4
    await committed(broker, 0)
    broker.stop(signal.SIGKILL)

    restarted = broker_process(config)
    port = restarted.port("tcp:default")
    other = await WireClient.open(port)
    await other.send(Connect(version=5, client_id="owned", clean_start=False, username="mallory",
                             properties={"session_expiry_interval": EXPIRY}))
    ack = await other.recv()
    assert ack.reason_code == 0 and not ack.session_present, ack
    other.drop()
    again = await WireClient.open(port)
    await again.send(Connect(version=5, client_id="owned", clean_start=False, username="alice",
                             properties={"session_expiry_interval": EXPIRY}))
    ack = await again.recv()
    assert ack.reason_code == 0 and ack.session_present, ack
    message = await again.recv()
    assert message.type == PUBLISH and message.payload == b"for alice"
    again.drop()


async def _online_subscriber(port: int, received: list, ack_first: int) -> None:
    """The persistent session online, acknowledging the first ``ack_first`` QoS 1 messages as they arrive and
    then only reading (so the rest stays in flight); ends when the broker goes away."""
    client = await WireClient.open(port)
    assert (await client.connect(SUBSCRIBER, clean_start=False, expiry=EXPIRY)).reason_code == 0
    try:
        while True:
            packet = await client.recv(30)
            if packet.type == PUBLISH:
                received.append(packet.payload)
                if len(received) <= ack_first:
                    await client.send(PubAck(PUBACK, packet.packet_id))
    except (EOFError, ConnectionError, OSError, asyncio.TimeoutError):
        pass
    finally:
        client.drop()


async def test_messages_an_online_subscriber_acknowledged_before_their_commit_survive_sigkill(broker_process,
                                                                                             tmp_path):
    """A QoS 1 PUBLISH whose delivery the online persistent session acknowledged before the group commit is
    acknowledged to its publisher without a row ever written (insert and delete coalesced in the gathering
    batch); later ones, not acknowledged by the subscriber, wait for their commit. SIGKILL in the middle: every
    message the publisher had a PUBACK for was either acknowledged by the subscriber or arrives after the
    restart, and the PUBACKs came in the order of the PUBLISHes."""
    config = durable_config(tmp_path / "data")
    broker = broker_process(config)
    port = broker.port("tcp:default")
    await subscribe_offline(port, "online/#", qos=1)
    online: list = []
    subscriber = asyncio.ensure_future(_online_subscriber(port, online, ack_first=1500))
    await asyncio.sleep(0.2)

    publisher = await WireClient.open(port)
    assert (await publisher.connect("online-pub")).reason_code == 0
    acked: list = []  # payloads, in the order their PUBACKs arrived
    outstanding: dict[int, bytes] = {}
    sent = 0
    try:
        while sent < 4000 or outstanding:
            while sent < 4000 and len(outstanding) < 50:
                sent += 1
                outstanding[sent] = payload = b"1:%06d:" % sent
                await publisher.send(Publish("online/x", payload, 1, packet_id=sent))
            packet = await publisher.recv(10)
            if packet.type == PUBACK:
                assert packet.reason_code == 0, packet
                acked.append(outstanding.pop(packet.packet_id))
                if len(acked) == 2500:
                    broker.stop(signal.SIGKILL)
    except (EOFError, ConnectionError, OSError, asyncio.TimeoutError):
        pass
    finally:
        publisher.drop()
    await subscriber
    assert len(acked) >= 2500 and len(online) > 1500, (len(acked), len(online))
    assert acked == sorted(acked), "PUBACKs out of PUBLISH order"

    restarted = broker_process(config)
    after = [packet.payload for packet in await drain(restarted.port("tcp:default"))]
    confirmed = set(online[:1500])
    missing = [payload for payload in acked if payload not in confirmed and payload not in after]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    assert any(payload not in confirmed for payload in acked)  # some went through their commit too
