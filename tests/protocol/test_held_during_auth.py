"""Packets that arrive with the CONNECT, or while an asynchronous authenticator is still deciding, are held (the
connection stops reading meanwhile) and processed in order afterwards -- acknowledged like any others; a
malformed packet among them ends the connection there. Guards for the hypotheses ruled out while chasing
issue #19's lost PUBACK (see test_ack_order.py for what it was)."""

from __future__ import annotations

import asyncio

from wharf_broker.auth import AuthResult
from wharf_broker.broker import Broker
from wharf_broker.listener_context import ListenerContext
from wharf_broker.listener_slots import counted_factory
from wharf_broker.metrics import Registry
from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.frame import encode
from wharf_broker.mqtt.packets import (CONNACK, DISCONNECT, PUBACK, PUBLISH, SUBACK, Connect, Publish, Subscribe,
                                       SubOptions)

from tests.support.wire import HOST, WireClient

from .conftest import RunningBroker, stop_broker


class SlowAuth:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def authenticate(self, info) -> AuthResult:
        await self.release.wait()
        return AuthResult.allow()


async def _slow_broker(auth: SlowAuth) -> RunningBroker:
    broker = Broker(auth_hooks=[auth], registry=Registry())
    listener = ListenerContext(id="tcp:default", type="tcp")
    factory = counted_factory(listener, broker.protocol_factory(listener))
    server = await asyncio.get_running_loop().create_server(factory, HOST, 0)
    return RunningBroker(broker, server, listener)


async def test_packets_sent_during_authentication_are_acknowledged_in_order():
    auth = SlowAuth()
    running = await _slow_broker(auth)
    try:
        client = await WireClient.open(running.port, 5)
        await client.send_raw(encode(Connect(version=5, client_id="held"), 5)
                              + encode(Subscribe(1, [("TopicA", SubOptions(1))]), 5)
                              + encode(Publish("TopicA", b"1", 1, False, False, 2, {"topic_alias": 1}), 5))
        await asyncio.sleep(0.05)
        await client.send_raw(encode(Publish("", b"2", 1, False, False, 3, {"topic_alias": 1}), 5))
        await client.expect_nothing(0.1)
        auth.release.set()
        got = [await client.recv() for _ in range(6)]
        assert [(p.type, getattr(p, "packet_id", None)) for p in got if p.type != PUBLISH] == [
            (CONNACK, None), (SUBACK, 1), (PUBACK, 2), (PUBACK, 3)]
        assert [p.payload for p in got if p.type == PUBLISH] == [b"1", b"2"]
        await client.close()
    finally:
        await stop_broker(running)


async def test_a_malformed_packet_while_held_ends_the_connection_there(protocol_log):
    auth = SlowAuth()
    running = await _slow_broker(auth)
    try:
        client = await WireClient.open(running.port, 5)
        await client.send_raw(encode(Connect(version=5, client_id="broken"), 5))
        await asyncio.sleep(0.05)
        await client.send_raw(b"\x30\x03\x00\x05a")  # PUBLISH whose topic length overruns the packet
        await asyncio.sleep(0.05)
        # Bytes after the bad packet: a valid-looking PUBLISH that must never be routed.
        await client.send_raw(encode(Publish("after/error", b"x", 0), 5))
        await asyncio.sleep(0.05)
        auth.release.set()
        packets = await client.closed()
        assert [(p.type, p.reason_code) for p in packets] == [(CONNACK, 0), (DISCONNECT, rc.MALFORMED_PACKET)]
        assert "internal error" not in protocol_log.text
        assert running.dropped("no_subscribers") == 0  # "after/error" was not published
    finally:
        await stop_broker(running)
