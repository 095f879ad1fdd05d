"""A small synchronous MQTT client on paho-mqtt for the cluster tests: connect, subscribe, publish and collect
what arrives, with every wait bounded."""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 20.0


class Client:
    def __init__(self, port: int, client_id: str = "", *, v5: bool = True, clean: bool = True,
                 session_expiry: int = 0, will: tuple | None = None, will_delay: int = 0) -> None:
        self.port = port
        self.v5 = v5
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        self.messages: queue.Queue = queue.Queue()
        self.acks: dict[int, int] = {}  # mid -> reason code of its PUBACK/PUBREC(/PUBCOMP)
        self.disconnects: queue.Queue = queue.Queue()
        self._connack: queue.Queue = queue.Queue()
        self._subacks: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.paho.on_connect = lambda c, u, flags, rc, props: self._connack.put((flags.session_present, rc))
        self.paho.on_message = lambda c, u, msg: self.messages.put(msg)
        self.paho.on_subscribe = lambda c, u, mid, codes, props: self._subacks.put(codes)
        self.paho.on_publish = self._on_publish
        self.paho.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        if will is not None:
            topic, payload, qos = will
            props = None
            if v5 and will_delay:
                props = Properties(PacketTypes.WILLMESSAGE)
                props.WillDelayInterval = will_delay
            self.paho.will_set(topic, payload, qos, properties=props)
        self._clean = clean
        self._session_expiry = session_expiry

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self.acks[mid] = reason_code.value if hasattr(reason_code, "value") else int(reason_code)

    def connect(self) -> bool:
        """Connects and returns the CONNACK's session present flag."""
        kwargs = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            if self._session_expiry:
                props.SessionExpiryInterval = self._session_expiry
            kwargs = {"clean_start": self._clean, "properties": props}
        self.paho.connect("127.0.0.1", self.port, keepalive=30, **kwargs)
        self.paho.loop_start()
        present, rc = self._connack.get(timeout=WAIT)
        assert not rc.is_failure, f"CONNACK refused: {rc}"
        return bool(present)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.paho.subscribe(topic_filter, qos)
        codes = self._subacks.get(timeout=WAIT)
        assert not any(code.is_failure for code in codes), codes

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False):
        return self.paho.publish(topic, payload, qos, retain)

    def publish_acked(self, topic: str, payload, qos: int = 1, retain: bool = False) -> int:
        """Publish and wait for the acknowledgement; returns its reason code (0 = success)."""
        info = self.publish(topic, payload, qos, retain)
        info.wait_for_publish(WAIT)
        with self._lock:
            return self.acks.get(info.mid, 0)

    def take(self, count: int, timeout: float = WAIT) -> list:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                out.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                break
        return out

    def drain(self) -> list:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (the will fires)."""
        self.paho.loop_stop()
        self.paho.socket().close()


def await_route(publisher: Client, subscribers: list[Client], topic: str, timeout: float = 30.0) -> None:
    """Publish QoS 0 probes on ``topic`` until every subscriber got one: the cluster's interest has spread.
    Probes are drained afterwards."""
    deadline = time.monotonic() + timeout
    waiting = list(subscribers)
    while waiting:
        assert time.monotonic() < deadline, f"no route to {len(waiting)} subscriber(s) for {topic!r}"
        publisher.publish(topic, b"probe", 0)
        time.sleep(0.1)
        for sub in list(waiting):
            if any(m.topic == topic for m in sub.drain()):
                waiting.remove(sub)
    time.sleep(0.3)
    for sub in subscribers:
        sub.drain()
