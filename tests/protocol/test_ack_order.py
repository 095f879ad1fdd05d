"""Issue #19: "a lost PUBACK with a client topic alias". The Paho 5.0 interop suite's test_client_topic_alias
failed ~2 % of runs on Wharf, never on mosquitto. A packet capture showed Wharf did send the PUBACK, in the same
TCP segment right after the client's own copy of the message (it subscribes to the topic it publishes to);
the interop client's ``disconnect()`` stops its receiver thread as soon as the copy has been counted, so when
its main thread won that race the PUBACK was never read and ``outMsgs`` was not empty. mosquitto writes the
PUBACK first. Wharf now does too: the acknowledgement goes ahead of the copies its PUBLISH produced for the
same client, so a client that stops reading at its own message has always seen its acknowledgement."""

from __future__ import annotations

import asyncio
import socket

import pytest

from wharf_broker.mqtt.frame import Parser, encode
from wharf_broker.mqtt.packets import PUBACK, PUBLISH, PUBREC, Connect, PubAck, Publish, Subscribe, SubOptions

from .conftest import HOST


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [1, 2])
async def test_acknowledgement_precedes_the_publishers_own_copy(broker, version, qos):
    client = await broker.client("self-sub", version=version)
    await client.subscribe("TopicA", qos=2)
    properties = {"topic_alias": 1} if version == 5 else None
    await client.send(Publish("TopicA", b"topic alias 1", qos, False, False, 4, properties))
    first, second = await client.recv(), await client.recv()
    assert (first.type, first.packet_id) == (PUBACK if qos == 1 else PUBREC, 4)
    assert second.type == PUBLISH and second.payload == b"topic alias 1"
    if version == 5:  # again with the alias alone, as in the Paho test
        await client.ack(second)
        if qos == 2:
            await client.send(PubAck(6, 4))
            await client.recv()  # PUBCOMP
        await client.send(Publish("", b"topic alias 2", qos, False, False, 5, {"topic_alias": 1}))
        first, second = await client.recv(), await client.recv()
        assert (first.type, first.packet_id) == (PUBACK if qos == 1 else PUBREC, 5)
        assert (second.type, second.topic, second.payload) == (PUBLISH, "TopicA", b"topic alias 2")


def _interop_client_flow(port: int) -> dict:
    """The Paho interop client's receive loop in miniature, at its worst interleaving: blocking reads of one
    packet at a time, and the receiver stops right after it handed over the message (what disconnect()'s
    ``stopping = True`` does when the main thread sees the message first)."""
    sock = socket.create_connection((HOST, port), timeout=5)
    parser = Parser(version=5)
    pending: list = []

    def next_packet():
        while not pending:
            pending.extend(parser.feed(sock.recv(1)))  # byte by byte, as its getPacket() reads
        return pending.pop(0)

    sock.sendall(encode(Connect(version=5, client_id="client topic alias",
                                properties={"topic_alias_maximum": 0, "session_expiry_interval": 99999}), 5))
    next_packet()  # CONNACK
    sock.sendall(encode(Subscribe(3, [("TopicA", SubOptions(2))]), 5))
    next_packet()  # SUBACK
    out_msgs = {4: "topic alias 1"}
    sock.sendall(encode(Publish("TopicA", b"topic alias 1", 1, False, False, 4, {"topic_alias": 1}), 5))
    messages = []
    stopping = False
    while not stopping:
        packet = next_packet()
        if packet.type == PUBACK:
            out_msgs.pop(packet.packet_id, None)
        elif packet.type == PUBLISH:
            messages.append(packet.payload)
            sock.sendall(encode(PubAck(PUBACK, packet.packet_id), 5))
            stopping = True  # the main thread saw its message and called disconnect()
    sock.close()
    return {"messages": messages, "outMsgs": out_msgs}


async def test_a_client_that_stops_reading_at_its_own_message_has_its_puback(broker):
    result = await asyncio.to_thread(_interop_client_flow, broker.port)
    assert result == {"messages": [b"topic alias 1"], "outMsgs": {}}
