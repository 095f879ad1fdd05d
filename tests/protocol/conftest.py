"""Fixtures for the protocol tests: an in-process broker on an ephemeral loopback port, and a raw MQTT client
built on the broker's own codec for protocol edges and malformed input."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from wharf_broker.broker import Broker
from wharf_broker.config.model import BrokerConfig
from wharf_broker.listener_context import ListenerContext
from wharf_broker.listener_slots import counted_factory
from wharf_broker.metrics import Registry
from wharf_broker.mqtt.frame import Parser, encode
from wharf_broker.mqtt.packets import (CONNACK, Connect, Disconnect, PingReq, PubAck, Publish, Subscribe,
                                       SubOptions, Unsubscribe)

HOST = "127.0.0.1"


class RunningBroker:
    def __init__(self, broker: Broker, server: asyncio.Server, listener: ListenerContext) -> None:
        self.broker = broker
        self.server = server
        self.listener = listener
        self.port = server.sockets[0].getsockname()[1]

    async def client(self, client_id: str = "", version: int = 5, **connect) -> "RawClient":
        """A raw client that has connected (CONNACK checked to be a success)."""
        client = await RawClient.open(self.port, version)
        ack = await client.connect(client_id, **connect)
        assert ack.reason_code == 0, ack
        return client

    async def raw(self, version: int = 5) -> "RawClient":
        return await RawClient.open(self.port, version)

    def dropped(self, reason: str) -> float:
        return self.broker.metrics.dropped(reason).value


async def start_broker(config: BrokerConfig | None = None, topic_alias_out: bool = False,
                       **mqtt_overrides) -> RunningBroker:
    config = config or BrokerConfig()
    if mqtt_overrides:
        config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, **mqtt_overrides))
    broker = Broker(config, registry=Registry())
    listener = ListenerContext(id="tcp:default", type="tcp", topic_alias_out=topic_alias_out)
    factory = counted_factory(listener, broker.protocol_factory(listener))
    server = await asyncio.get_running_loop().create_server(factory, HOST, 0)
    return RunningBroker(broker, server, listener)


async def stop_broker(running: RunningBroker) -> None:
    running.server.close()
    await running.broker.shutdown(timeout=2)
    await running.server.wait_closed()
    # Nothing leaks: every connection was counted out again.
    assert running.listener.current_connections == 0
    assert not running.broker.connections


@pytest.fixture
async def broker():
    """An in-process broker with the default config."""
    running = await start_broker()
    yield running
    await stop_broker(running)


@pytest.fixture
async def make_broker():
    """Factory: ``await make_broker(max_inflight=2, ...)`` -- a broker with ``mqtt`` settings overridden (or a
    whole ``config=``; ``topic_alias_out=True`` for a listener that sends server-to-client topic aliases)."""
    started: list[RunningBroker] = []

    async def make(config: BrokerConfig | None = None, **overrides) -> RunningBroker:
        running = await start_broker(config, **overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        await stop_broker(running)


class RawClient:
    """Speaks MQTT packet by packet with the broker's codec; ``recv`` returns decoded packets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int) -> None:
        self.reader = reader
        self.writer = writer
        self.version = version
        self.parser = Parser(version=version)
        self.pending: list = []
        self._next_id = 0

    @classmethod
    async def open(cls, port: int, version: int = 5) -> "RawClient":
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer, version)

    def packet_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, packet) -> None:
        await self.send_raw(encode(packet, self.version))

    async def recv(self, timeout: float = 5.0):
        """The next packet; raises ``EOFError`` when the broker closed the connection."""
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("connection closed by the broker")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    async def expect_nothing(self, wait: float = 0.3) -> None:
        """Assert that no packet arrives within ``wait`` seconds."""
        try:
            packet = await self.recv(wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected packet {packet!r}")

    async def closed(self, timeout: float = 5.0) -> list:
        """Read until the broker closes the connection; returns the packets received until then."""
        packets = []
        while True:
            try:
                packets.append(await self.recv(timeout))
            except (EOFError, ConnectionResetError):
                return packets

    async def connect(self, client_id: str = "", **fields):
        await self.send(Connect(version=self.version, client_id=client_id, **fields))
        ack = await self.recv()
        assert ack.type == CONNACK, ack
        return ack

    async def subscribe(self, *filters: str, qos: int = 0, properties: dict | None = None, **options):
        packet = Subscribe(self.packet_id(), [(f, SubOptions(qos, **options)) for f in filters], properties)
        await self.send(packet)
        ack = await self.recv()
        assert ack.packet_id == packet.packet_id, ack
        return ack

    async def unsubscribe(self, *filters: str):
        packet = Unsubscribe(self.packet_id(), list(filters))
        await self.send(packet)
        return await self.recv()

    async def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                      properties: dict | None = None, packet_id: int | None = None):
        """Publish; at QoS 1/2 completes the acknowledgement flow and returns the PUBACK / PUBCOMP."""
        if qos and packet_id is None:
            packet_id = self.packet_id()
        await self.send(Publish(topic, payload, qos, retain, False, packet_id if qos else None, properties))
        if qos == 1:
            return await self.recv()
        if qos == 2:
            rec = await self.recv()
            assert rec.type == 5, rec
            await self.send(PubAck(6, packet_id))
            return await self.recv()
        return None

    async def ack(self, packet) -> None:
        """Acknowledge a received PUBLISH (PUBACK, or PUBREC + wait PUBREL + PUBCOMP)."""
        if packet.qos == 1:
            await self.send(PubAck(4, packet.packet_id))
        elif packet.qos == 2:
            await self.send(PubAck(5, packet.packet_id))
            rel = await self.recv()
            assert rel.type == 6 and rel.packet_id == packet.packet_id, rel
            await self.send(PubAck(7, packet.packet_id))

    async def ping(self):
        await self.send(PingReq())
        return await self.recv()

    async def disconnect(self, reason_code: int = 0, properties: dict | None = None) -> None:
        await self.send(Disconnect(reason_code, properties))
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


@pytest.fixture
def protocol_log(caplog):
    caplog.set_level(logging.INFO, logger="wharf_broker")
    return caplog
