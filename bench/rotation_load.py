"""Load for the certificate-rotation scenario: TLS clients publishing QoS 1 and one TLS subscriber counting.

Every publisher publishes numbered QoS 1 messages at a fixed rate for ``--duration`` seconds; the subscriber
(on the same TLS listener) records which ones arrive. Every unexpected disconnect of any client is counted
(the clients would reconnect, which is exactly what must not be needed). Prints ``ready`` once all clients are
connected, then one JSON line with the counts:

    published, acked, received, lost (acked but never received), duplicates, disconnects, connect_failures

This is a Python load (paho-mqtt) on purpose: here the question is whether anything is lost or dropped while
certificates change, at a moderate rate that the clients keep up with, not how fast the broker is.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.disconnects = 0
        self.connect_failures = 0
        self.received: set[str] = set()
        self.duplicates = 0


def _client(name: str, ctx: ssl.SSLContext, counters: Counters, connected: threading.Event) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    client.tls_set_context(ctx)
    client.user_data_set({"closing": False})

    def on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            with counters.lock:
                counters.connect_failures += 1
        else:
            connected.set()

    def on_disconnect(c, userdata, flags, reason_code, properties):
        if not userdata["closing"]:
            with counters.lock:
                counters.disconnects += 1

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(0.1, 1.0)
    return client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--publishers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=25.0, help="messages per second per publisher")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--topic", default="bench/rotation")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the last acks/deliveries")
    args = parser.parse_args(argv)

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    counters = Counters()

    sub_ready = threading.Event()
    sub_connected = threading.Event()
    subscriber = _client("bench-rot-sub", ctx, counters, sub_connected)
    count_connect = subscriber.on_connect

    def on_sub_connect(c, userdata, flags, reason_code, properties):
        count_connect(c, userdata, flags, reason_code, properties)
        c.subscribe(f"{args.topic}/#", qos=1)  # again after a reconnect, so that counting goes on

    def on_message(c, userdata, message):
        key = message.payload.decode()
        with counters.lock:
            if key in counters.received:
                counters.duplicates += 1
            counters.received.add(key)

    subscriber.on_connect = on_sub_connect
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda c, userdata, mid, reason_codes, properties: sub_ready.set()
    subscriber.connect(HOST, args.port, keepalive=30)
    subscriber.loop_start()

    # Packet ids identify a publisher's messages as long as they do not wrap around (65535 per client).
    per_publisher = args.rate * args.duration
    if per_publisher > 60000:
        parser.error("rate * duration must stay below 60000 messages per publisher")
    publishers = []
    for index in range(args.publishers):
        connected = threading.Event()
        client = _client(f"bench-rot-pub-{index}", ctx, counters, connected)
        # on_publish runs in paho's network thread while paho holds its own lock: it only records the id.
        state = {"acked_mids": set(), "mid_to_key": {}, "lock": threading.Lock()}

        def on_publish(c, userdata, mid, reason_code, properties, state=state):
            with state["lock"]:
                state["acked_mids"].add(mid)

        client.on_publish = on_publish
        client.connect(HOST, args.port, keepalive=30)
        client.loop_start()
        publishers.append((client, connected, state))

    setup_deadline = time.monotonic() + 30
    if not sub_ready.wait(max(0.0, setup_deadline - time.monotonic())) or not all(
            ev.wait(max(0.0, setup_deadline - time.monotonic())) for _, ev, _ in publishers):
        print(json.dumps({"error": "clients did not connect within 30 s"}), flush=True)
        return 1
    print("ready", flush=True)

    published = 0
    start = time.monotonic()
    tick = 1.0 / args.rate
    seq = 0
    while time.monotonic() - start < args.duration:
        for index, (client, _, state) in enumerate(publishers):
            key = f"{index}:{seq}"
            info = client.publish(f"{args.topic}/{index}", key, qos=1)
            state["mid_to_key"][info.mid] = key
            published += 1
        seq += 1
        delay = start + seq * tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def acked_keys() -> set[str]:
        keys = set()
        for _, _, state in publishers:
            with state["lock"]:
                mids = set(state["acked_mids"])
            keys.update(state["mid_to_key"][mid] for mid in mids if mid in state["mid_to_key"])
        return keys

    drain_until = time.monotonic() + args.drain
    while time.monotonic() < drain_until:
        acked = acked_keys()
        with counters.lock:
            done = len(acked) == published and acked <= counters.received
        if done:
            break
        time.sleep(0.05)

    for client in [p[0] for p in publishers] + [subscriber]:
        client.user_data_set({"closing": True})
        client.disconnect()
        client.loop_stop()
    acked = acked_keys()
    with counters.lock:
        result = {
            "published": published,
            "acked": len(acked),
            "received": len(counters.received),
            "lost": len(acked - counters.received),
            "duplicates": counters.duplicates,
            "disconnects": counters.disconnects,
            "connect_failures": counters.connect_failures,
        }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
