"""``mqtt.max_keepalive`` (mosquitto's cap) and the per-listener ``topic_alias_out`` switch, with real clients
(paho-mqtt, aiomqtt, mosquitto_sub) and raw packets."""

from __future__ import annotations

import asyncio
import shutil
import threading

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wharf_broker.limits import _CHILDREN as LIMIT_COUNTERS
from wharf_broker.mqtt import reason_codes as rc

from .conftest import HOST


class Paho:
    """A paho client on its own network thread; CONNACK and messages collected."""

    def __init__(self, client_id: str, port: int, version: int = 5) -> None:
        protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id, protocol=protocol)
        self.port = port
        self.connack = None
        self.connected = threading.Event()
        self.messages: list = []
        self.arrived = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.connack = (reason, properties)
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()

    def start(self, keepalive: int = 60, properties: Properties | None = None) -> "Paho":
        self.client.connect(HOST, self.port, keepalive=keepalive, properties=properties)
        self.client.loop_start()
        assert self.connected.wait(5)
        return self

    def wait_messages(self, count: int, timeout: float = 10) -> list:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
        return self.messages

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, 1)
        assert done.wait(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _server_keep_alive(properties) -> int | None:
    return getattr(properties, "ServerKeepAlive", None)


# ------------------------------------------------------------------------------------------- max_keepalive

async def test_max_keepalive_caps_paho_v5_and_keeps_shorter_values(make_broker):
    running = await make_broker(max_keepalive=60)

    def scenario() -> list:
        told = []
        for asked in (2, 60, 61, 3600, 0):
            client = Paho(f"ka-{asked}", running.port).start(keepalive=asked)
            reason, properties = client.connack
            assert reason == 0
            told.append((asked, _server_keep_alive(properties)))
            client.stop()
        return told

    told = await asyncio.to_thread(scenario)
    # Less (or the cap itself) keeps its own value: no Server Keep Alive. More, or 0, is told the cap.
    assert told == [(2, None), (60, None), (61, 60), (3600, 60), (0, 60)]


async def test_server_keepalive_still_overrides_every_v5_client(make_broker):
    running = await make_broker(max_keepalive=60, server_keepalive=30)

    def scenario():
        client = Paho("ka-override", running.port).start(keepalive=2)
        reason, properties = client.connack
        client.stop()
        return _server_keep_alive(properties)

    assert await asyncio.to_thread(scenario) == 30


async def test_will_fires_at_the_clients_own_keepalive_under_the_cap(make_broker):
    """A 5.0 client asking for 1 s under a 60 s cap keeps 1 s: its will fires after 1.5 s of silence, not 90 s.
    Before the cap existed, ``server_keepalive = 60`` was the only way to bound keep-alives and this client's
    will came a minute late."""
    running = await make_broker(max_keepalive=60)
    async with aiomqtt.Client(HOST, running.port, identifier="will-watcher",
                              protocol=aiomqtt.ProtocolVersion.V5) as watcher:
        await watcher.subscribe("ka/will", qos=1)

        def die_silently() -> None:
            client = Paho("ka-will", running.port)
            client.client.will_set("ka/will", b"gone", qos=1)
            client.start(keepalive=1)
            assert _server_keep_alive(client.connack[1]) is None
            client.client.loop_stop()  # no more PINGREQs, socket left open

        await asyncio.to_thread(die_silently)
        channel = running.broker.channels["ka-will"]
        assert channel.keepalive == 1
        async with asyncio.timeout(15):
            async for message in watcher.messages:
                assert message.payload == b"gone"
                break


async def test_max_keepalive_refuses_v311_clients_beyond_it(make_broker):
    """3.1.1 has no Server Keep Alive: a client asking for more than the cap, or for 0, is refused with
    "identifier rejected" (mosquitto 2's behaviour); one asking for less connects."""
    running = await make_broker(max_keepalive=60)
    before = LIMIT_COUNTERS["max_keepalive"].value

    def connect(keepalive: int):
        client = Paho(f"v3-{keepalive}", running.port, version=4).start(keepalive=keepalive)
        reason = client.connack[0]
        client.stop()
        return reason

    assert await asyncio.to_thread(connect, 30) == 0
    for keepalive in (61, 0):
        reason = await asyncio.to_thread(connect, keepalive)
        assert reason == "Client identifier not valid" or reason.value == rc.CLIENT_IDENTIFIER_NOT_VALID
    assert LIMIT_COUNTERS["max_keepalive"].value == before + 2
    # aiomqtt (3.1.1) sees the refusal as an error.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(HOST, running.port, identifier="aio-v3", keepalive=120):
            pass
    async with aiomqtt.Client(HOST, running.port, identifier="aio-v3-ok", keepalive=20):
        assert running.broker.channels["aio-v3-ok"].keepalive == 20


# ----------------------------------------------------------------------------------------- topic_alias_out

async def test_topic_aliases_out_are_off_by_default_for_paho(make_broker):
    """paho-mqtt 2.2 announces a Topic Alias Maximum when asked to but has no inbound alias support: with the
    default (off) it gets every topic in full."""
    running = await make_broker()
    await asyncio.to_thread(_paho_alias_round, running.port, ["al/a", "al/a", "al/a"])


async def test_topic_aliases_out_on_reach_a_client_that_allows_them(make_broker):
    running = await make_broker(topic_alias_out=True)
    # paho gets the alias announcement (with the topic), then an empty topic: it cannot resolve aliases itself,
    # which is why the default is off.
    await asyncio.to_thread(_paho_alias_round, running.port, ["al/a", "", ""])
    # A client that does not announce a maximum never gets aliases, whatever the listener says.
    sub = await running.client("plain", version=5)
    await sub.subscribe("al/#")
    pub = await running.client("pub2")
    await pub.publish("al/b", b"1")
    await pub.publish("al/b", b"2")
    got = [await sub.recv(), await sub.recv()]
    assert [(m.topic, (m.properties or {}).get("topic_alias")) for m in got] == [("al/b", None), ("al/b", None)]


def _paho_alias_round(port: int, expected_topics: list[str]) -> None:
    properties = Properties(PacketTypes.CONNECT)
    properties.TopicAliasMaximum = 10
    sub = Paho("alias-sub", port).start(properties=properties)
    sub.subscribe("al/#")
    pub = Paho("alias-pub", port).start()
    for n in range(len(expected_topics)):
        pub.client.publish("al/a", b"%d" % n, qos=1).wait_for_publish(5)
    messages = sub.wait_messages(len(expected_topics))
    assert [m.topic for m in messages] == expected_topics
    for client in (sub, pub):
        client.stop()


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients is not installed")
def test_topic_alias_out_from_a_config_file(broker_process):
    process = broker_process("""
listeners.tcp.default { bind = "127.0.0.1:0" }
listeners.tcp.aliased { bind = "127.0.0.1:0", topic_alias_out = on }
dashboard.listeners.http.bind = "127.0.0.1:0"
""")
    for listener, expected in (("tcp:default", ["al/a", "al/a"]), ("tcp:aliased", ["al/a", ""])):
        _paho_alias_round(process.port(listener), expected)
