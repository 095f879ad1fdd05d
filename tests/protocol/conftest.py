"""Fixtures for the protocol tests: an in-process broker on an ephemeral loopback port, and raw MQTT clients
(``tests.support.wire``) for protocol edges and malformed input."""

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

from tests.support.wire import HOST, WireClient

__all__ = ["HOST", "RunningBroker", "start_broker", "stop_broker"]


class RunningBroker:
    def __init__(self, broker: Broker, server: asyncio.Server, listener: ListenerContext) -> None:
        self.broker = broker
        self.server = server
        self.listener = listener
        self.port = server.sockets[0].getsockname()[1]

    async def client(self, client_id: str = "", version: int = 5, **connect) -> "WireClient":
        """A raw client that has connected (CONNACK checked to be a success)."""
        client = await WireClient.open(self.port, version)
        ack = await client.connect(client_id, **connect)
        assert ack.reason_code == 0, ack
        return client

    async def raw(self, version: int = 5) -> "WireClient":
        return await WireClient.open(self.port, version)

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


@pytest.fixture
def protocol_log(caplog):
    caplog.set_level(logging.INFO, logger="wharf_broker")
    return caplog
