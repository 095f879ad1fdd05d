"""Fuzz targets shared by ``scripts/fuzz`` (atheris, a million inputs and more) and the regular test suite (the
corpus plus a bounded hypothesis slice).

- ``codec(data)``: the packet parser for 3.1.1 and 5.0, fed whole and split at a data-chosen point: only
  ``FrameError`` may come out, both ways must agree, and every decoded packet must re-encode and decode to the
  same packet type.
- ``connect_path(data)``: the bytes as a client's first bytes on a broker connection (a real ``Broker`` and
  ``Connection`` with an in-memory transport, ACL and flapping detection on): the broker must never log an
  internal error, and every connection must be closed or alive, never half-dead.

A failed check raises ``AssertionError``; anything else escaping is a crash too.
"""

from __future__ import annotations

import asyncio
import logging

from wharf_broker.broker import Broker
from wharf_broker.config.model import (
    Authorization,
    BrokerConfig,
    FlappingDetect,
    MqttSettings,
)
from wharf_broker.connection import Connection
from wharf_broker.listener_context import ListenerContext
from wharf_broker.metrics import Registry
from wharf_broker.mqtt.frame import FrameError, Parser, encode

MAX_PACKET = 64 * 1024


def codec(data: bytes) -> None:
    cut = data[0] % (len(data) + 1) if data else 0
    for version in (4, 5):
        whole, whole_error = _parse(version, [data])
        split, split_error = _parse(version, [data[:cut], data[cut:]])
        assert [repr(p) for p in whole] == [repr(p) for p in split], (whole, split)
        assert (whole_error is None) == (split_error is None), (whole_error, split_error)
        current = version  # a CONNECT switches the parser to its version for what follows
        for packet in whole:
            if packet.type == 1:
                current = packet.version
            again, error = _parse(current, [encode(packet, current)])
            assert error is None and len(again) == 1 and again[0].type == packet.type, (packet, again, error)


def _parse(version: int, chunks: list[bytes]):
    parser = Parser(MAX_PACKET, version)
    packets: list = []
    for chunk in chunks:
        try:
            packets += parser.feed(chunk)
        except FrameError as error:
            return packets + list(error.packets), error
    return packets, None


class _MemoryTransport(asyncio.Transport):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__({"peername": (host, 40000)})
        self.closing = False
        self.written = 0

    def write(self, data) -> None:
        self.written += len(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _InternalErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ConnectHarness:
    """One broker reused for many inputs (rebuilt every ``rebuild_every`` so sessions do not pile up)."""

    def __init__(self, rebuild_every: int = 5000) -> None:
        self.loop = asyncio.new_event_loop()
        self.rebuild_every = rebuild_every
        self.count = 0
        self.errors = _InternalErrors()
        logging.getLogger("wharf_broker").addHandler(self.errors)
        logging.getLogger("wharf_broker").setLevel(logging.ERROR)
        self.listener = ListenerContext(id="tcp:fuzz", type="tcp", mountpoint="m/${clientid}/")
        self._build()

    def _build(self) -> None:
        config = BrokerConfig(
            mqtt=MqttSettings(max_packet_size=MAX_PACKET, max_topic_levels=16, max_subscriptions=8),
            authorization=Authorization(no_match="deny"),
            flapping_detect=FlappingDetect(enable=True, max_count=50, window_time=60.0, ban_time=1.0))
        self.broker = Broker(config, registry=Registry())
        self.broker._loop = self.loop

    def run(self, data: bytes) -> None:
        self.count += 1
        if self.count % self.rebuild_every == 0:
            self._build()
        connection = Connection(self.broker, self.listener)
        # A new source address every input (flapping detection also counts per address; one address for all
        # inputs would get it banned and every later input refused before it is parsed).
        transport = _MemoryTransport(f"10.{(self.count >> 16) & 255}.{(self.count >> 8) & 255}.{self.count & 255}")
        connection.connection_made(transport)
        cut = data[-1] % (len(data) + 1) if data else 0
        connection.data_received(data[:cut])
        if not transport.closing:
            connection.data_received(data[cut:])
        self._spin()
        connection.connection_lost(None)
        self._spin()
        if self.errors.records:
            record = self.errors.records[0]
            self.errors.records.clear()
            raise AssertionError(f"internal error for input {data!r}: {record.getMessage()}\n{record.exc_text}")
        assert connection not in self.broker.connections

    def _spin(self) -> None:
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    def close(self) -> None:
        logging.getLogger("wharf_broker").removeHandler(self.errors)
        self.loop.close()
