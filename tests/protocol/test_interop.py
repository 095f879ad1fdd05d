"""Real clients against the broker: paho-mqtt (3.1.1 and 5.0), mosquitto_pub / mosquitto_sub, aiomqtt; in
process and as a real ``python -m wharf_broker`` process."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import threading

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import DISCONNECT

from tests.support.wire import HOST, WireClient

needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
                                     reason="mosquitto-clients is not installed")


class PahoClient:
    """A paho client run by its own network thread, with received messages collected."""

    def __init__(self, client_id: str, port: int, version: int, **connect) -> None:
        protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id, protocol=protocol)
        self.messages: list = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.arrived = threading.Condition()
        self.client.on_connect = lambda c, u, flags, code, props: self.connected.set()
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subscribed.set()
        self.client.on_message = self._on_message
        self.port = port
        self.connect_args = connect

    def _on_message(self, client, userdata, message) -> None:
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()

    def start(self) -> "PahoClient":
        self.client.connect(HOST, self.port, **self.connect_args)
        self.client.loop_start()
        assert self.connected.wait(5)
        return self

    def subscribe(self, topic: str, qos: int) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self.subscribed.wait(5)

    def wait_messages(self, count: int, timeout: float = 10) -> list:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
        return self.messages

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _paho_round_trip(port: int, version: int) -> None:
    sub = PahoClient(f"paho-sub-{version}", port, version).start()
    sub.subscribe("paho/#", 2)
    pub = PahoClient(f"paho-pub-{version}", port, version).start()
    properties = None
    if version == 5:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [("origin", "paho")]
        properties.ResponseTopic = "paho/replies"
    for qos in (0, 1, 2):
        pub.client.publish(f"paho/{qos}", f"m{qos}".encode(), qos=qos, properties=properties).wait_for_publish(5)
    pub.client.publish("paho/retained", b"r", qos=1, retain=True).wait_for_publish(5)
    messages = sub.wait_messages(4)
    assert sorted((m.topic, m.payload, m.qos) for m in messages) == [
        ("paho/0", b"m0", 0), ("paho/1", b"m1", 1), ("paho/2", b"m2", 2), ("paho/retained", b"r", 1)]
    if version == 5:
        first = next(m for m in messages if m.topic == "paho/1")
        assert first.properties.UserProperty == [("origin", "paho")]
        assert first.properties.ResponseTopic == "paho/replies"
    late = PahoClient(f"paho-late-{version}", port, version).start()
    late.subscribe("paho/retained", 1)
    [retained] = late.wait_messages(1)
    assert retained.retain and retained.payload == b"r"
    for client in (sub, pub, late):
        client.stop()


@pytest.mark.parametrize("version", [4, 5])
async def test_paho(broker, version):
    await asyncio.to_thread(_paho_round_trip, broker.port, version)


async def test_paho_will(broker):
    watcher = await broker.client("watcher")
    await watcher.subscribe("paho/will", qos=1)

    def run() -> None:
        client = PahoClient("paho-will", broker.port, 4)
        client.client.will_set("paho/will", b"lost", qos=1)
        client.start()
        client.client.loop_stop()
        client.client.socket().close()  # dies without DISCONNECT

    await asyncio.to_thread(run)
    assert (await watcher.recv()).payload == b"lost"


async def test_aiomqtt(broker):
    async with aiomqtt.Client(HOST, broker.port, identifier="aio-sub", protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe("aio/+", qos=1)
        async with aiomqtt.Client(HOST, broker.port, identifier="aio-pub") as pub:
            for n in range(3):
                await pub.publish(f"aio/{n}", f"p{n}".encode(), qos=1)
        got = []
        async with asyncio.timeout(5):
            async for message in sub.messages:
                got.append((str(message.topic), message.payload))
                if len(got) == 3:
                    break
    assert got == [("aio/0", b"p0"), ("aio/1", b"p1"), ("aio/2", b"p2")]


async def _mosquitto_exchange(running, qos: int, count: int) -> list[bytes]:
    """``mosquitto_pub -l`` sends ``count`` lines through the broker to ``mosquitto_sub -C count``."""
    port = running.port
    client_id = f"mosq-sub-{qos}"
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", HOST, "-p", str(port), "-t", "mosq/#", "-q", str(qos), "-C", str(count),
        "-i", client_id, "-W", "20", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    # Publish only once its subscription is in place.
    for _ in range(500):
        session = running.broker.sessions.get(client_id)
        if session is not None and session.subscriptions:
            break
        await asyncio.sleep(0.01)
    lines = b"".join(b"line %d\n" % n for n in range(count))
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", HOST, "-p", str(port), "-t", "mosq/lines", "-q", str(qos), "-l",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await pub.communicate(lines)
    assert pub.returncode == 0
    out, err = await asyncio.wait_for(sub.communicate(), 30)
    assert sub.returncode == 0, err
    return out.splitlines()


@needs_mosquitto
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_mosquitto_clients(broker, qos):
    lines = await _mosquitto_exchange(broker, qos, 500)
    assert lines == [b"line %d" % n for n in range(500)]


@needs_mosquitto
async def test_mosquitto_v5_retained(broker):
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-t", "mosq/r", "-m", "kept", "-r", "-q", "1",
        "-V", "mqttv5", "-D", "publish", "user-property", "k", "v")
    assert await pub.wait() == 0
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", HOST, "-p", str(broker.port), "-t", "mosq/#", "-C", "1", "-V", "mqttv5", "-W", "10",
        "-F", "%t %p %r", stdout=asyncio.subprocess.PIPE)
    out, _ = await sub.communicate()
    assert out.strip() == b"mosq/r kept 1"


# ------------------------------------------------------------------------------- real broker process

@needs_mosquitto
def test_real_process_with_mosquitto_and_paho(broker_process):
    process = broker_process()
    port = process.port("tcp:default")
    _paho_round_trip(port, 5)
    sub = subprocess.Popen(["mosquitto_sub", "-h", HOST, "-p", str(port), "-t", "proc/#", "-C", "100", "-q", "1",
                            "-W", "20", "-i", "proc-sub"], stdout=subprocess.PIPE)
    probe = PahoClient("probe", port, 5).start()
    probe.subscribe("proc/#", 1)
    subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-t", "proc/x", "-q", "1", "-l"],
                   input=b"".join(b"%d\n" % n for n in range(100)), check=True, timeout=20)
    probe.wait_messages(100)
    # The admin API lists the connected clients from ``Broker.clients()``, and the counters moved.
    status, body = process.admin("GET", "/api/v5/clients")
    assert status == 200
    listed = {client["clientid"]: client for client in json.loads(body)["data"]}
    assert listed["probe"]["proto_ver"] == 5 and listed["probe"]["listener"] == "tcp:default"
    status, body = process.admin("GET", "/metrics")
    received = re.search(rb"^wharf_messages_received_total (\d+)", body, re.M)
    assert status == 200 and received and int(received[1]) >= 100
    probe.stop()
    out, _ = sub.communicate(timeout=20)
    assert sub.returncode == 0
    assert out.splitlines() == [b"%d" % n for n in range(100)]


def test_real_process_sigterm_disconnects_v5_clients(broker_process):
    process = broker_process()
    port = process.port("tcp:default")

    async def scenario() -> list:
        client = await WireClient.open(port, 5)
        assert (await client.connect("stays")).reason_code == 0
        process.send_signal(signal.SIGTERM)
        return await client.closed(timeout=10)

    packets = asyncio.run(scenario())
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.SERVER_SHUTTING_DOWN)]
    assert process.proc.wait(20) == 0


def test_runs_on_uvloop():
    uvloop = pytest.importorskip("uvloop")
    from .conftest import start_broker, stop_broker

    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        running = await start_broker()
        try:
            sub = await running.client("uv-sub")
            await sub.subscribe("uv/#", qos=1)
            pub = await running.client("uv-pub", version=4)
            for n in range(50):
                assert (await pub.publish("uv/x", b"%d" % n, qos=1)).type == 4
            got = []
            for _ in range(50):
                message = await sub.recv()
                got.append(message.payload)
                await sub.ack(message)
            assert got == [b"%d" % n for n in range(50)]
            await pub.close()  # abnormal close: counted out all the same
        finally:
            await stop_broker(running)

    uvloop.run(scenario())
