"""Malformed and protocol-violating input: that one connection is closed (5.0: DISCONNECT with the reason
first), logged once, and nothing leaks or crashes."""

from __future__ import annotations

import asyncio
import random

import pytest

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.packets import CONNACK, DISCONNECT



@pytest.mark.parametrize("raw, code", [
    (b"\x00\x00", rc.MALFORMED_PACKET),                       # reserved packet type 0
    (b"\x36\x05\x00\x01a\x00\x01", rc.MALFORMED_PACKET),      # QoS 3
    (b"\x30\x05\x00\x03a\xff\xfe", rc.MALFORMED_PACKET),      # topic not UTF-8
    (b"\x82\x03\x00\x01\x00", rc.PROTOCOL_ERROR),             # SUBSCRIBE without filters
    (b"\x30\xff\xff\xff\xff\x01", rc.MALFORMED_PACKET),       # remaining length of five bytes
    (b"\x20\x03\x00\x00\x00", rc.PROTOCOL_ERROR),             # a CONNACK from the client
])
async def test_malformed_after_connect(broker, protocol_log, raw, code):
    client = await broker.client("bad", version=5)
    healthy = await broker.client("healthy", version=5)
    await client.send_raw(raw)
    packets = await client.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, code)]
    # Logged once, with the client id and peer.
    lines = [r for r in protocol_log.records if "closing connection of client 'bad'" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0].getMessage()
    # Everyone else is fine.
    assert (await healthy.ping()).type == 13
    await asyncio.sleep(0.05)
    assert broker.listener.current_connections == 1


async def test_malformed_v311_is_just_closed(broker):
    client = await broker.client("bad", version=4)
    await client.send_raw(b"\x00\x00")
    assert await client.closed() == []


async def test_malformed_v5_connect_gets_connack(broker):
    client = await broker.raw(5)
    # A 5.0 CONNECT whose properties claim more bytes than there are.
    await client.send_raw(b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x09\x00\x01x")
    packets = await client.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(CONNACK, rc.MALFORMED_PACKET)]


async def test_garbage_never_hurts_the_broker(broker):
    """Many connections sending random bytes, before and after CONNECT: all closed, none leaked."""
    rng = random.Random(7)
    watcher = await broker.client("watcher")
    clients = []
    for n in range(40):
        client = await broker.raw(rng.choice([4, 5]))
        if n % 2:
            await client.connect(f"g{n}")
        await client.send_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        clients.append(client)
    async def finish(client) -> None:
        # Either closed by the broker, or waiting for the rest of a packet: we hang up ourselves then.
        try:
            await client.closed(timeout=0.3)
        except asyncio.TimeoutError:
            pass
        await client.close()

    await asyncio.gather(*(finish(client) for client in clients))
    for _ in range(100):
        if broker.listener.current_connections == 1:
            break
        await asyncio.sleep(0.02)
    assert broker.listener.current_connections == 1
    assert (await watcher.ping()).type == 13


async def test_shutdown_disconnects_everyone(make_broker):
    running = await make_broker()
    v5 = await running.client("five", version=5)
    v3 = await running.client("three", version=4)
    pending = await running.raw(5)  # connected socket, no CONNECT yet
    await running.broker.shutdown(timeout=2)
    packets = await v5.closed()
    assert [(p.type, p.reason_code) for p in packets] == [(DISCONNECT, rc.SERVER_SHUTTING_DOWN)]
    assert await v3.closed() == []
    assert await pending.closed() == []
    assert running.listener.current_connections == 0
