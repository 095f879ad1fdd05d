"""Helpers for the durability tests: broker configs with a data directory, sessions opened with the raw MQTT
client (``tests.support.wire``: every PUBACK/PUBREC is seen as it arrives), a publishing burst and a draining
subscriber."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

from wharf_broker.mqtt.packets import PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, Disconnect, PubAck, Publish

from tests.support.wire import WireClient

SUBSCRIBER = "durable-sub"
EXPIRY = 7200


def durable_config(data_dir: Path, extra: str = "") -> str:
    return f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
mqtt.max_mqueue_len = 100000
durable_storage {{
  enable = true
  data_dir = "{data_dir}"
}}
{extra}
"""


async def subscribe_offline(port: int, topic_filter: str = "burst/#", qos: int = 2, sub_id: int | None = None,
                            client_id: str = SUBSCRIBER, version: int = 5) -> None:
    """A persistent session (5.0: expiry 2 h; 3.1.1: clean session 0) subscribed to ``topic_filter``, then gone."""
    client = await WireClient.open(port, version)
    if version == 4:  # a 3.1.1 persistent session starts from a clean one, then keeps it
        assert (await client.connect(client_id, clean_start=True)).reason_code == 0
        client.drop()
        client = await WireClient.open(port, version)
    assert (await client.connect(client_id, clean_start=version == 5, expiry=EXPIRY)).reason_code == 0
    properties = {"subscription_identifier": [sub_id]} if sub_id else None
    assert (await client.subscribe(topic_filter, qos=qos, properties=properties)).reason_codes == [qos]
    await client.send(Disconnect(0))
    client.drop()


async def burst(port: int, count: int, acked: dict, topic: str = "burst/x", payload_size: int = 16,
                window: int = 50, refused: list | None = None, version: int = 5) -> None:
    """Publish ``count`` messages (QoS 1 and 2 alternating) with up to ``window`` unacknowledged. ``acked``
    gets payload -> QoS for every PUBACK/PUBREC with a success code; ``refused`` the payloads refused. Ends
    quietly when the broker goes away."""
    client = await WireClient.open(port, version)
    assert (await client.connect("durable-pub")).reason_code == 0
    outstanding: dict[int, tuple[bytes, int]] = {}
    sent = 0
    try:
        while sent < count or outstanding:
            while sent < count and len(outstanding) < window:
                sent += 1
                qos = 1 if sent % 2 else 2
                payload = f"{qos}:{sent:06d}:".encode().ljust(payload_size, b".")
                outstanding[sent] = (payload, qos)
                await client.send(Publish(topic, payload, qos, packet_id=sent))
            packet = await client.recv(10)
            if packet.type in (PUBACK, PUBREC):
                payload, qos = outstanding.pop(packet.packet_id) if packet.type == PUBACK else \
                    outstanding[packet.packet_id]
                if packet.reason_code < 0x80:
                    acked[payload] = qos
                elif refused is not None:
                    refused.append(payload)
                    outstanding.pop(packet.packet_id, None)
                if packet.type == PUBREC and packet.reason_code < 0x80:
                    await client.send(PubAck(PUBREL, packet.packet_id))
            elif packet.type == PUBCOMP:
                outstanding.pop(packet.packet_id, None)
    except (EOFError, ConnectionError, OSError, asyncio.TimeoutError):
        pass
    finally:
        client.drop()


async def drain(port: int, client_id: str = SUBSCRIBER, quiet: float = 1.5, version: int = 5) -> list:
    """Resume the persistent session and acknowledge everything until nothing arrives for ``quiet`` seconds;
    returns the PUBLISH packets received (QoS 2 counted when PUBREL arrives, as a client application would)."""
    client = await WireClient.open(port, version)
    ack = await client.connect(client_id, clean_start=False, expiry=EXPIRY)
    assert ack.reason_code == 0, ack
    assert ack.session_present, "the persistent session did not survive"
    received = []
    held: dict[int, object] = {}  # QoS 2: packet id -> PUBLISH until PUBREL (the receiver's duplicate filter)
    try:
        while True:
            try:
                packet = await client.recv(quiet)
            except asyncio.TimeoutError:
                break
            if packet.type == PUBLISH:
                if packet.qos == 1:
                    received.append(packet)
                    await client.send(PubAck(PUBACK, packet.packet_id))
                elif packet.qos == 2:
                    held.setdefault(packet.packet_id, packet)
                    await client.send(PubAck(PUBREC, packet.packet_id))
                else:
                    received.append(packet)
            elif packet.type == PUBREL:
                publish = held.pop(packet.packet_id, None)
                if publish is not None:
                    received.append(publish)
                await client.send(PubAck(PUBCOMP, packet.packet_id))
    finally:
        client.drop()
    return received


def metric(broker, name: str) -> float:
    """Sum of a metric family's samples from the broker's /metrics (``name{labels}`` or ``name``)."""
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M):
        total += float(match.group(1))
    return total


async def committed(broker, since: float, timeout: float = 30.0) -> float:
    """Wait until the broker's store committed more than ``since`` changes and has nothing left to commit;
    returns the new count. (Waiting, not a timed assertion: the timeout only keeps a broken broker from
    hanging the test.)"""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        changes = metric(broker, "wharf_store_changes_total")
        if changes > since and metric(broker, "wharf_store_backlog_changes") == 0:
            return changes
        assert asyncio.get_running_loop().time() < deadline, f"store never committed:\n{broker.log}"
        await asyncio.sleep(0.05)
