"""``$SYS`` topics (EMQX's layout): published by a real broker process and read by real clients
(mosquitto_sub, paho-mqtt, aiomqtt); the $SYS reservation, wildcard rules, ACL and mountpoints in process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import time

import aiomqtt
import pytest

from wharf_broker import __version__
from wharf_broker.config.model import SysEventMessages, SysTopics as SysTopicsConfig
from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import PUBACK, PUBREC, Publish, Will
from wharf_broker.sys_topics import SysTopics, is_sys_topic, topic_level

from .conftest import HOST

needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients is not installed")

NODE = "wharf@sys-test"
SYS_CONFIG = f"""
node.name = "{NODE}"
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
sys_topics {{ sys_msg_interval = 1s, sys_heartbeat_interval = 1s }}
"""


def _sub(port: int, topic: str, count: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(["mosquitto_sub", "-h", HOST, "-p", str(port), "-t", topic, "-C", str(count), "-W", "15",
                             "-v", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lines(proc: subprocess.Popen) -> dict[str, str]:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    found = {}
    for line in out.decode().splitlines():
        topic, _, payload = line.partition(" ")
        found[topic] = payload
    return found


@needs_mosquitto
def test_real_process_publishes_emqx_layout_to_mosquitto_sub(broker_process):
    process = broker_process(SYS_CONFIG)
    port = process.port("tcp:default")
    prefix = f"$SYS/brokers/{NODE}"
    # Retained ones arrive at once, from the first tick at start-up.
    retained = _lines(_sub(port, f"{prefix}/version", 1))
    assert retained == {f"{prefix}/version": __version__}
    sysdescr = _lines(_sub(port, f"{prefix}/sysdescr", 1))
    assert sysdescr[f"{prefix}/sysdescr"].startswith("Wharf")
    nodes = _lines(_sub(port, "$SYS/brokers", 1))
    assert nodes == {"$SYS/brokers": NODE}
    # The periodic ones: heartbeat and the stats/metrics tick (1 s each here).
    found = _lines(_sub(port, f"{prefix}/#", 60))
    assert int(found[f"{prefix}/uptime"]) >= 0
    assert found[f"{prefix}/datetime"].endswith("+00:00")
    assert int(found[f"{prefix}/stats/connections/count"]) >= 1  # mosquitto_sub itself
    assert int(found[f"{prefix}/stats/connections/max"]) >= 1
    for name in ("sessions/count", "subscriptions/count", "topics/count", "retained/count"):
        assert f"{prefix}/stats/{name}" in found, sorted(found)
    for name in ("messages/received", "messages/sent", "messages/dropped", "bytes/received", "bytes/sent"):
        assert int(found[f"{prefix}/metrics/{name}"]) >= 0, name
    assert int(found[f"{prefix}/metrics/bytes/received"]) > 0
    # A plain "#" subscriber never sees $SYS (MQTT 4.7.2).
    everything = _sub(port, "#", 1, "-W", "3")
    out, _ = everything.communicate(timeout=10)
    assert b"$SYS" not in out


def test_real_process_client_events_to_paho_and_aiomqtt(broker_process):
    process = broker_process(SYS_CONFIG)
    port = process.port("tcp:default")

    async def scenario() -> list:
        got = []
        async with aiomqtt.Client(HOST, port, identifier="sys-watcher", protocol=aiomqtt.ProtocolVersion.V5) as w:
            await w.subscribe(f"$SYS/brokers/{NODE}/clients/#")
            async with aiomqtt.Client(HOST, port, identifier="ev/client+1", username="alice", keepalive=42):
                pass
            async with asyncio.timeout(10):
                async for message in w.messages:
                    got.append((str(message.topic), json.loads(message.payload), message.retain))
                    if len(got) == 2:
                        break
        return got

    (topic1, connected, retain1), (topic2, disconnected, retain2) = asyncio.run(scenario())
    prefix = f"$SYS/brokers/{NODE}/clients/ev%2Fclient%2B1"
    assert (topic1, topic2) == (f"{prefix}/connected", f"{prefix}/disconnected")
    assert not retain1 and not retain2  # events are not retained (EMQX)
    assert connected["clientid"] == "ev/client+1" and connected["username"] == "alice"
    assert connected["ipaddress"] == "127.0.0.1" and connected["sockport"] == port
    assert connected["proto_name"] == "MQTT" and connected["proto_ver"] == 4 and connected["protocol"] == "mqtt"
    assert connected["keepalive"] == 42 and connected["clean_start"] is True
    assert abs(connected["connected_at"] / 1000 - time.time()) < 60
    assert disconnected["reason"] == "normal" and disconnected["disconnected_at"] >= connected["connected_at"]
    assert disconnected["connected_at"] == connected["connected_at"]


# ------------------------------------------------------------------------------------------- in process

async def _with_sys(running, **events) -> SysTopics:
    settings = SysTopicsConfig(sys_msg_interval=0, sys_heartbeat_interval=0,
                               sys_event_messages=SysEventMessages(**events) if events else SysEventMessages())
    sys_topics = SysTopics(running.broker, settings, "n1")
    sys_topics.start()
    return sys_topics


async def test_clients_cannot_publish_under_sys(broker):
    await _with_sys(broker, client_connected=False, client_disconnected=False)
    watcher = await broker.client("watcher")
    await watcher.subscribe("$SYS/#")
    v5 = await broker.client("v5")
    for qos, kind in ((1, PUBACK), (2, PUBREC)):
        packet_id = v5.packet_id()
        await v5.send(Publish("$SYS/brokers/n1/version", b"spoof", qos, True, False, packet_id))
        ack = await v5.recv()
        assert (ack.type, ack.packet_id, ack.reason_code) == (kind, packet_id, rc.NOT_AUTHORIZED)
    await v5.publish("$SYS", b"spoof")
    v3 = await broker.client("v3", version=4)
    ack = await v3.publish("$SYS/brokers/n1/clients/x/connected", b"{}", qos=1)
    assert ack.type == PUBACK  # 3.1.1 cannot hear a refusal: acknowledged and dropped
    # "$SYSTEM/x" is not $SYS.
    await v3.publish("$SYSTEM/x", b"ok")
    await watcher.expect_nothing()
    assert broker.dropped("sys_topic") == 4
    assert broker.broker.retained.get("$SYS/brokers/n1/version") is None  # the retained spoof was not stored


async def test_a_will_under_sys_is_dropped(broker):
    await _with_sys(broker, client_connected=False, client_disconnected=False)
    watcher = await broker.client("watcher")
    await watcher.subscribe("$SYS/#")
    dying = await broker.client("dying", will=Will("$SYS/brokers/n1/uptime", b"spoof", 0, False, {}))
    await dying.close()
    await watcher.expect_nothing(0.5)
    assert broker.dropped("sys_topic") == 1


async def test_wildcards_at_the_first_level_never_match_sys(broker):
    sys_topics = await _with_sys(broker)
    hash_sub = await broker.client("hash")
    await hash_sub.subscribe("#", "+/brokers/#", "+/+/+/+")
    sys_sub = await broker.client("sys")
    await sys_sub.subscribe("$SYS/brokers/+/stats/#")
    sys_topics.tick()
    stats = [await sys_sub.recv() for _ in range(16)]
    assert {m.topic for m in stats} >= {"$SYS/brokers/n1/stats/connections/count",
                                        "$SYS/brokers/n1/stats/subscriptions/max"}
    counts = {m.topic.rsplit("/stats/", 1)[1]: int(m.payload) for m in stats}
    assert counts["connections/count"] == 2 and counts["live_connections/count"] == 2
    assert counts["subscriptions/count"] == 4 and counts["topics/count"] == 4
    await hash_sub.expect_nothing()
    sys_topics.stop()
    assert broker.broker.sys_events is None


async def test_events_cost_nothing_when_off_and_publish_when_on(make_broker):
    running = await make_broker()
    await _with_sys(running, client_connected=False, client_disconnected=False)
    assert running.broker.sys_events is None
    watcher = await running.client("watcher")
    await watcher.subscribe("$SYS/#")
    await (await running.client("quiet")).disconnect()
    await watcher.expect_nothing()

    other = await make_broker()
    await _with_sys(other, client_connected=False)
    watcher = await other.client("watcher")
    await watcher.subscribe("$SYS/brokers/n1/clients/#")
    kicked = await other.client("twice")
    await other.client("twice")  # takes the session over
    event = await watcher.recv()
    assert event.topic == "$SYS/brokers/n1/clients/twice/disconnected"
    assert json.loads(event.payload)["reason"] == "takenover"
    await kicked.close()


async def test_sys_follows_the_acl_and_stays_out_of_mounted_views(tmp_path, make_broker):
    from wharf_broker.config.model import AclFile, Authorization, BrokerConfig
    acl = tmp_path / "acl.conf"
    acl.write_text('{allow, {username, "dashboard"}, subscribe, ["$SYS/#"]}.\n'
                   '{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.\n{allow, all}.\n')
    config = BrokerConfig(authorization=Authorization(file=AclFile(enable=True, path=str(acl))))
    running = await make_broker(config)
    sys_topics = await _with_sys(running)
    allowed = await running.client("dash", username="dashboard")
    assert (await allowed.subscribe("$SYS/#")).reason_codes == [0]
    refused = await running.client("someone", username="someone")
    assert (await refused.subscribe("$SYS/#")).reason_codes == [rc.NOT_AUTHORIZED]
    # Behind a mountpoint, "$SYS/#" is mounted below it and never meets the broker's $SYS.
    running.listener.mountpoint = "tenant/"
    mounted = await running.client("mounted", username="dashboard")
    assert (await mounted.subscribe("$SYS/#")).reason_codes == [0]
    running.listener.mountpoint = ""
    sys_topics.tick()
    first = await allowed.recv()
    assert first.topic.startswith("$SYS/")
    await mounted.expect_nothing()
    await refused.expect_nothing(0.1)


def test_sys_topic_helpers():
    assert is_sys_topic("$SYS") and is_sys_topic("$SYS/x") and is_sys_topic("$SYS/")
    assert not is_sys_topic("$SYSTEM") and not is_sys_topic("SYS/x") and not is_sys_topic("$sys/x")
    assert topic_level("plain-id") == "plain-id"
    assert topic_level("a/b+c#d%e\x00") == "a%2Fb%2Bc%23d%25e%00"


def test_sys_topics_config_defaults_and_checks():
    from wharf_broker.config.errors import ConfigError
    from wharf_broker.config.loader import load_string
    config = load_string('listeners.tcp.a.bind = "127.0.0.1:0"', "s.conf")
    assert dataclasses.asdict(config.sys_topics) == {
        "sys_msg_interval": 60.0, "sys_heartbeat_interval": 30.0,
        "sys_event_messages": {"client_connected": True, "client_disconnected": True}}
    config = load_string('sys_topics { sys_msg_interval = 0, sys_event_messages.client_connected = false }',
                         "s.conf")
    assert config.sys_topics.sys_msg_interval == 0 and not config.sys_topics.sys_event_messages.client_connected
    with pytest.raises(ConfigError, match="sys_topics.sys_heartbeat_interval: must be 0"):
        load_string("sys_topics.sys_heartbeat_interval = 100ms", "s.conf")
