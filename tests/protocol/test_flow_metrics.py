"""Flow control towards slow consumers, and the broker's metrics."""

from __future__ import annotations

import asyncio


async def test_slow_qos0_consumer_is_shed_not_buffered(make_broker):
    """A subscriber that stops reading: the socket backs up, the transport pauses us, and QoS 0 beyond the
    backlog limit is dropped (counted) instead of growing memory; the client itself stays connected."""
    broker = await make_broker(max_send_buffer=256 * 1024)
    slow = await broker.client("slow", version=4)
    await slow.subscribe("flood")
    slow.writer.transport.pause_reading()  # stop reading: the kernel buffers fill up
    pub = await broker.client("pub", version=4)
    chunk = b"x" * 16384
    for _ in range(2000):  # ~32 MB
        await pub.publish("flood", chunk)
    await pub.ping()  # everything above has been routed
    dropped = broker.dropped("slow_consumer")
    assert dropped > 0
    connection = broker.broker.channels["slow"].connection
    assert connection.backlog_bytes <= 256 * 1024 + len(chunk) + 8
    # Reading again drains what was kept; the connection is still alive.
    slow.writer.transport.resume_reading()
    received = 0
    while received < 2000 - dropped:
        message = await slow.recv(10)
        assert message.payload == chunk
        received += 1
    assert (await slow.ping()).type == 13


async def test_metrics(broker):
    metrics = broker.broker.metrics
    sub = await broker.client("sub", version=5, clean_start=False, properties={"session_expiry_interval": 60})
    await sub.subscribe("m/#", qos=1)
    pub = await broker.client("pub")
    assert metrics.connections.value == 2 and metrics.connected.value == 2 and metrics.sessions.value == 2
    for n in range(3):
        await pub.publish("m/x", b"%d" % n, qos=1)
    await pub.publish("nobody", b"", qos=1)
    for _ in range(3):
        await sub.ack(await sub.recv())
    await pub.publish("m/r", b"kept", retain=True)
    await sub.ack(await sub.recv())
    assert metrics.received.value == 5
    assert metrics.sent.value == 4
    assert metrics.dropped("no_subscribers").value == 1
    assert metrics.retained.value == 1
    await sub.close()
    await pub.disconnect()
    await asyncio.sleep(0.05)
    assert metrics.connections.value == 0 and metrics.connected.value == 0
    assert metrics.sessions.value == 1  # the persistent one stays


async def test_fan_out_encodes_each_wire_form_once(broker, monkeypatch):
    from wharf_broker import router as router_module
    calls = []
    real = router_module.encode_publish_parts

    def counting(*args):
        calls.append(args[2:4] + (args[6],))  # qos, retain, version
        return real(*args)

    monkeypatch.setattr(router_module, "encode_publish_parts", counting)
    subscribers = [await broker.client(f"s{n}", version=4) for n in range(3)]
    subscribers += [await broker.client(f"v{n}", version=5) for n in range(2)]
    for client in subscribers:
        await client.subscribe("fan")
    qos1 = await broker.client("q1", version=4)
    await qos1.subscribe("fan", qos=1)
    pub = await broker.client("pub")
    await pub.publish("fan", b"shared", qos=1)
    for client in subscribers + [qos1]:
        assert (await client.recv()).payload == b"shared"
    # One encoding per distinct wire form: 3.1.1 QoS 0, 5.0 QoS 0, 3.1.1 QoS 1 -- not one per subscriber.
    assert sorted(calls) == [(0, False, 4), (0, False, 5), (1, False, 4)]
