"""A well-behaved QoS 1 client pair on paho-mqtt, kept running while a test attacks the broker: every message the
publisher got a PUBACK for must reach the subscriber."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"


class PahoQos1Witness:
    """``with PahoQos1Witness(port) as witness: <attack>`` then ``witness.report`` (``lost`` must be 0)."""

    def __init__(self, port: int, topic: str = "witness/stream", interval: float = 0.01) -> None:
        self.port = port
        self.topic = topic
        self.interval = interval
        self.acked: list[int] = []
        self.received: set[int] = set()
        self.report: dict = {}
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _client(self, client_id: str) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=False)
        client.max_inflight_messages_set(1)
        return client

    def __enter__(self) -> PahoQos1Witness:
        self.subscriber = self._client("witness-sub")

        def on_connect(client, _userdata, _flags, reason_code, _properties) -> None:
            client.subscribe(self.topic, qos=1)

        def on_subscribe(_client, _userdata, _mid, _codes, _properties) -> None:
            self._subscribed.set()

        def on_message(_client, _userdata, message) -> None:
            with self._lock:
                self.received.add(int(message.payload))

        self.subscriber.on_connect = on_connect
        self.subscriber.on_subscribe = on_subscribe
        self.subscriber.on_message = on_message
        self.subscriber.connect(HOST, self.port, keepalive=30)
        self.subscriber.loop_start()
        assert self._subscribed.wait(15), "the witness subscriber could not subscribe"
        self.publisher = self._client("witness-pub")
        self.publisher.connect(HOST, self.port, keepalive=30)
        self.publisher.loop_start()
        self._thread = threading.Thread(target=self._publish, daemon=True)
        self._thread.start()
        return self

    def _publish(self) -> None:
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            info = self.publisher.publish(self.topic, str(sequence), qos=1)
            try:
                info.wait_for_publish(timeout=30)
            except RuntimeError:
                return  # the publisher lost its connection: reported as acked < sent
            if info.is_published():
                self.acked.append(sequence)
            time.sleep(self.interval)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(40)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self._lock:
                if set(self.acked) <= self.received:
                    break
            time.sleep(0.05)
        for client in (self.publisher, self.subscriber):
            client.disconnect()
            client.loop_stop()
        with self._lock:
            lost = sorted(set(self.acked) - self.received)
        self.report = {"acked": len(self.acked), "received": len(self.received), "lost": len(lost),
                       "lost_first": lost[:10]}
