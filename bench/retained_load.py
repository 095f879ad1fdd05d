"""The ``retained`` scenario's client side: fill a broker with retained messages, then time SUBSCRIBEs.

Plain sockets and hand-built MQTT 3.1.1 packets, so that the client costs as little as possible. Loading sends
QoS 0 retained PUBLISHes on ``r/<k>/<i>`` (1000 topics per ``k``) in batches, each batch closed by a PINGREQ
whose PINGRESP says the broker has handled it (brokers handle one connection's packets in order). Timing sends
``q/<n>/#`` SUBSCRIBEs one at a time, each waiting for its SUBACK: filters that match none of the retained
messages, so what is measured is what a SUBSCRIBE costs the broker beside what it stores. ``full_match``
then subscribes to all of them while another client pings: how long the delivery takes, and how long the
broker leaves everyone else waiting meanwhile.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from bench import mqtt_wire, net

PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
TOPICS_PER_BRANCH = 1000
BATCH = 5000


def retained_topic(index: int) -> str:
    return f"r/{index // TOPICS_PER_BRANCH}/{index}"


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + mqtt_wire._encode_remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, retain: bool = True) -> bytes:
    """A QoS 0 PUBLISH, with the RETAIN flag unless told otherwise."""
    return _packet(0x31 if retain else 0x30, mqtt_wire._utf8(topic) + payload)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int = 0) -> bytes:
    return _packet(0x82, packet_id.to_bytes(2, "big") + mqtt_wire._utf8(topic_filter) + bytes([qos]))


def read_exactly(sock: socket.socket, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise mqtt_wire.ProtocolError("the broker closed the connection")
        data += chunk
    return bytes(data)


def connect(port: int, client_id: str, timeout: float) -> socket.socket:
    sock = socket.create_connection((net.HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(mqtt_wire.connect_packet(client_id))
    mqtt_wire.check_connack(read_exactly(sock, mqtt_wire.CONNACK_LENGTH))
    return sock


def load(sock: socket.socket, start: int, stop: int, deadline: float) -> int:
    """Retain messages ``start``..``stop - 1``; returns how many the broker has handled (fewer past ``deadline``)."""
    index = start
    while index < stop:
        if time.monotonic() > deadline:
            break
        end = min(stop, index + BATCH)
        batch = b"".join(publish_packet(retained_topic(i), b"retained-%08d" % i) for i in range(index, end))
        sock.sendall(batch + PINGREQ)
        if read_exactly(sock, 2) != PINGRESP:
            raise mqtt_wire.ProtocolError("expected PINGRESP after a batch of retained messages")
        index = end
    return index - start


def time_subscribes(sock: socket.socket, count: int, first_id: int) -> float:
    """Seconds per SUBSCRIBE (to its SUBACK), over ``count`` unmatched wildcard filters."""
    started = time.perf_counter()
    for offset in range(count):
        packet_id = (first_id + offset) % 65535 + 1
        sock.sendall(subscribe_packet(packet_id, f"q/{first_id + offset}/#"))
        ack = read_exactly(sock, 5)
        if ack[0] != 0x90 or int.from_bytes(ack[2:4], "big") != packet_id or ack[4] > 2:
            raise mqtt_wire.ProtocolError(f"expected a granted SUBACK for {packet_id}, got {ack!r}")
    return (time.perf_counter() - started) / count


def full_match(port: int, expected: int, timeout: float) -> tuple[float, float, bool]:
    """``mosquitto_sub`` (a process of its own, so that it does not share this one's interpreter with the
    pinger) subscribes to ``r/#``, every retained message, and exits after ``expected`` of them, while this
    process pings the broker back to back: (seconds until it exited, the slowest PING round trip meanwhile,
    whether it got them all)."""
    pinger = connect(port, "bench-retained-ping", timeout)
    argv = [shutil.which("mosquitto_sub") or "mosquitto_sub", "-h", net.HOST, "-p", str(port), "-V", "mqttv311",
            "-i", "bench-retained-all", "-t", "r/#", "-q", "0", "-C", str(expected), "-W", str(max(int(timeout), 1))]
    try:
        started = time.perf_counter()
        subscriber = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        slowest = 0.0
        try:
            while subscriber.poll() is None:
                sent = time.perf_counter()
                pinger.sendall(PINGREQ)
                if read_exactly(pinger, 2) != PINGRESP:
                    raise mqtt_wire.ProtocolError("expected PINGRESP")
                slowest = max(slowest, time.perf_counter() - sent)
                time.sleep(0.001)
        finally:
            if subscriber.poll() is None:
                subscriber.kill()
            subscriber.wait()
        elapsed = time.perf_counter() - started
    finally:
        pinger.close()
    return elapsed, slowest, subscriber.returncode == 0
