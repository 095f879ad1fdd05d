"""Real MQTT clients through every listener kind of a real broker process: tcp, ws and wss with paho (both
protocol versions), aiomqtt over websockets, and max_connections with real clients."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

CERTS = Path(__file__).resolve().parents[2] / "etc" / "certs"

try:
    from wharf_broker.tls import TlsListenerRuntime  # noqa: F401
    HAVE_TLS = True
except ImportError:
    HAVE_TLS = False


def transports_config() -> str:
    tls = f"""
listeners.wss.default {{
  bind = "127.0.0.1:0"
  ssl_options {{ certfile = "{CERTS}/server.crt", keyfile = "{CERTS}/server.key", cacertfile = "{CERTS}/rootCA.crt" }}
}}""" if HAVE_TLS else ""
    return f"""
listeners.tcp.default {{ bind = "127.0.0.1:0", max_connections = 2 }}
listeners.ws.default {{ bind = "127.0.0.1:0", websocket.mqtt_path = "/mqtt" }}
{tls}
dashboard.listeners.http.bind = "127.0.0.1:0"
"""


@pytest.fixture
def broker(broker_process):
    return broker_process(transports_config())


class Paho:
    """A connected paho client that records what it receives."""

    def __init__(self, port: int, protocol: int, transport: str = "tcp", tls: bool = False,
                 client_id: str = "") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  transport=transport)
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        if tls:
            self.client.tls_set(ca_certs=str(CERTS / "rootCA.crt"))
        self.client.on_connect = lambda c, u, flags, reason, props: self.connected.set() if not reason.is_failure \
            else None
        self.client.on_message = lambda c, u, message: self.messages.append((message.topic, message.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def roundtrip(client: Paho, topic: str) -> None:
    client.client.subscribe(topic, qos=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not client.messages:
        client.client.publish(topic, b"payload-" + topic.encode(), qos=1)
        time.sleep(0.2)
    assert (topic, b"payload-" + topic.encode()) in client.messages


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_paho_over_websocket(broker, protocol):
    client = Paho(broker.port("ws:default"), protocol, transport="websockets")
    try:
        roundtrip(client, f"ws/{protocol}")
    finally:
        client.close()


@pytest.mark.skipif(not HAVE_TLS, reason="wharf_broker.tls is not available")
@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_paho_over_secure_websocket(broker, protocol):
    client = Paho(broker.port("wss:default"), protocol, transport="websockets", tls=True)
    try:
        roundtrip(client, f"wss/{protocol}")
    finally:
        client.close()


def test_websocket_and_tcp_clients_share_one_broker(broker):
    tcp = Paho(broker.port("tcp:default"), mqtt.MQTTv5)
    ws = Paho(broker.port("ws:default"), mqtt.MQTTv311, transport="websockets")
    try:
        ws.client.subscribe("shared/topic", qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ws.messages:
            tcp.client.publish("shared/topic", b"from-tcp", qos=1)
            time.sleep(0.2)
        assert ("shared/topic", b"from-tcp") in ws.messages
    finally:
        tcp.close()
        ws.close()


async def test_aiomqtt_over_websocket(broker):
    async with aiomqtt.Client("127.0.0.1", broker.port("ws:default"), transport="websockets",
                              websocket_path="/mqtt", identifier="aiomqtt-ws") as client:
        await client.subscribe("aio/ws", qos=1)
        await client.publish("aio/ws", b"hello-ws", qos=1)
        async for message in client.messages:
            assert message.payload == b"hello-ws"
            break


def test_max_connections_with_real_clients(broker):
    first = Paho(broker.port("tcp:default"), mqtt.MQTTv5, client_id="one")
    second = Paho(broker.port("tcp:default"), mqtt.MQTTv311, client_id="two")
    try:
        third = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="three")
        connacks = []
        closed = threading.Event()
        third.on_connect = lambda c, u, flags, reason, props: connacks.append(reason)
        third.on_disconnect = lambda c, u, flags, reason, props: closed.set()
        third.connect("127.0.0.1", broker.port("tcp:default"))
        third.loop_start()
        try:
            assert closed.wait(10), "the connection over the limit was not closed"
        finally:
            third.loop_stop()
        assert connacks == [] and not third.is_connected()
        status, body = broker.admin("GET", "/metrics")
        assert b'wharf_listener_connections_refused_total{listener="tcp:default",reason="max_connections"} 1' in body
        # The two admitted clients are unaffected.
        roundtrip(first, "still/working")
    finally:
        first.close()
        second.close()
