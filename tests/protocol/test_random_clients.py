"""A bounded random workload: clients of both versions connecting, subscribing, publishing at every QoS,
acknowledging or not, dropping off and taking over each other's sessions. Afterwards the broker must have logged
no internal error, must still serve, and must have cleaned up every connection and every expired session."""

from __future__ import annotations

import asyncio
import logging
import os
import random

from wharf_broker.mqtt.packets import PUBLISH, Publish, Subscribe, SubOptions, Unsubscribe, Will

TOPICS = ["r/a", "r/b", "r/a/x", "$s/r"]
FILTERS = ["r/#", "r/+", "r/a", "+/a/#", "$s/#", "$share/g/r/#", "#"]


async def _drain(client, acknowledge: bool) -> None:
    while True:
        try:
            packet = await client.recv(0.01)
        except (TimeoutError, EOFError, ConnectionError):
            return
        if packet.type == PUBLISH and acknowledge and packet.qos:
            if packet.qos == 1:
                await client.send_raw(b"\x40\x02" + packet.packet_id.to_bytes(2, "big"))
            else:
                await client.send_raw(b"\x50\x02" + packet.packet_id.to_bytes(2, "big"))
        elif packet.type == 6 and acknowledge:  # PUBREL
            await client.send_raw(b"\x70\x02" + packet.packet_id.to_bytes(2, "big"))


async def test_random_workload(make_broker, caplog):
    caplog.set_level(logging.INFO, logger="wharf_broker")
    running = await make_broker(max_inflight=4, max_mqueue_len=20, session_expiry_interval=2)
    rng = random.Random(int(os.environ.get("RANDOM_WORKLOAD_SEED", "2026")))
    clients: dict[str, object] = {}
    for step in range(400):
        name = f"c{rng.randrange(8)}"
        client = clients.get(name)
        try:
            if client is None:
                version = rng.choice([4, 5])
                persistent = rng.random() < 0.5
                props = {"session_expiry_interval": 2} if version == 5 and persistent else None
                will = Will("r/will", b"w", qos=rng.randrange(3)) if rng.random() < 0.3 else None
                clients[name] = await running.client(name, version=version, clean_start=not persistent,
                                                      properties=props, will=will, keepalive=30)
                continue
            action = rng.random()
            if action < 0.35:
                qos = rng.randrange(3)
                await client.send(Publish(rng.choice(TOPICS), b"%d" % step, qos=qos, retain=rng.random() < 0.1,
                                          packet_id=client.packet_id() % 65535 + 1 if qos else None))
            elif action < 0.5:
                await client.send(Subscribe(client.packet_id() % 65535 + 1,
                                            [(rng.choice(FILTERS), SubOptions(rng.randrange(3)))]))
            elif action < 0.55:
                await client.send(Unsubscribe(client.packet_id() % 65535 + 1, [rng.choice(FILTERS)]))
            elif action < 0.62:
                await client.close()  # vanish without DISCONNECT
                del clients[name]
            elif action < 0.67:
                await client.disconnect()
                del clients[name]
            elif action < 0.7:
                await client.send_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))))
            await _drain(client, acknowledge=rng.random() < 0.8)
        except (EOFError, ConnectionError, TimeoutError):
            clients.pop(name, None)
    for client in clients.values():
        await client.close()
    await asyncio.sleep(0.2)
    internal = [r for r in caplog.records if "internal error" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not internal, [r.getMessage() for r in internal]
    assert running.listener.current_connections == 0
    assert not running.broker.channels
    # Persistent sessions (both versions, capped at 2 s) expire after their clients left; clean ones at once.
    await asyncio.sleep(2.2)
    assert not running.broker.sessions
    assert len(running.broker.router.trie) == 0
    # And the broker still works.
    probe = await running.client("probe")
    await probe.subscribe("probe/t")
    await probe.publish("probe/t", b"alive")
    assert (await probe.recv()).payload == b"alive"
