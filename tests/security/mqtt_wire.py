"""A small MQTT client for the security tests, on the broker's own codec: packet by packet, over plain TCP or
TLS, optionally behind a PROXY protocol header sent before anything else (before the TLS handshake too)."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

from wharf_broker.mqtt.frame import Parser, encode
from wharf_broker.mqtt.packets import (
    CONNACK,
    PUBLISH,
    Connect,
    PubAck,
    Publish,
    SubOptions,
    Subscribe,
)

HOST = "127.0.0.1"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(source: str, source_port: int, cert_cn: str | None = None, verified: bool = True) -> bytes:
    """A PROXY v2 PROXY/TCP4 header naming ``source``; with ``cert_cn`` a PP2_TYPE_SSL TLV as a load balancer
    that terminated TLS sends it (client presented a certificate, verify result 0 when ``verified``)."""
    address = (ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("127.0.0.1").packed
               + source_port.to_bytes(2, "big") + (8883).to_bytes(2, "big"))
    tlvs = b""
    if cert_cn is not None:
        cn = cert_cn.encode()
        sub = bytes((0x22,)) + len(cn).to_bytes(2, "big") + cn
        value = bytes((0x01 | 0x02,)) + (0 if verified else 1).to_bytes(4, "big") + sub
        tlvs = bytes((0x20,)) + len(value).to_bytes(2, "big") + value
    payload = address + tlvs
    return V2_SIGNATURE + b"\x21\x11" + len(payload).to_bytes(2, "big") + payload


class WireClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int) -> None:
        self.reader = reader
        self.writer = writer
        self.version = version
        self.parser = Parser(version=version)
        self.pending: list = []
        self._next_id = 0

    @classmethod
    async def open(cls, port: int, version: int = 5, *, tls: ssl.SSLContext | None = None,
                   proxy_header: bytes | None = None, source: str | None = None,
                   local: str | None = None) -> WireClient:
        """``source`` (or ``local``): the local address to connect from, any 127.0.0.0/8 address (e.g. 127.0.0.2,
        to play a load balancer or a second client machine)."""
        source = source or local
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0) if source else None)
        if proxy_header is not None:
            writer.write(proxy_header)
            await writer.drain()
        if tls is not None:
            await writer.start_tls(tls, server_hostname="localhost")
        return cls(reader, writer, version)

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def send(self, packet) -> None:
        self.writer.write(encode(packet, self.version))
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0):
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("connection closed by the broker")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    async def connect(self, client_id: str, username: str | None = None, password: bytes | None = None,
                      **fields):
        await self.send(Connect(version=self.version, client_id=client_id, username=username, password=password,
                                **fields))
        ack = await self.recv()
        assert ack.type == CONNACK, ack
        return ack

    async def subscribe(self, *filters: str, qos: int = 1):
        packet = Subscribe(self.packet_id(), [(f, SubOptions(qos)) for f in filters], None)
        await self.send(packet)
        return await self.recv()

    async def publish(self, topic: str, payload: bytes = b"x", qos: int = 1):
        """Send a PUBLISH; at QoS 1/2 returns the first acknowledgement (PUBACK / PUBREC)."""
        packet_id = self.packet_id() if qos else None
        await self.send(Publish(topic, payload, qos, False, False, packet_id, None))
        if not qos:
            return None
        deliveries = []  # messages arriving before the acknowledgement stay queued for recv()
        while True:
            packet = await self.recv()
            if packet.type != PUBLISH:
                self.pending[:0] = deliveries
                return packet
            deliveries.append(packet)

    async def send_publish_qos0(self, topic: str, payload: bytes) -> None:
        self.writer.write(encode(Publish(topic, payload, 0, False, False, None, None), self.version))
        await self.writer.drain()

    async def ping(self):
        self.writer.write(b"\xc0\x00")
        await self.writer.drain()
        while True:
            packet = await self.recv(timeout=60)
            if packet.type == 13:
                return packet

    async def ack(self, packet) -> None:
        if packet.qos == 1:
            await self.send(PubAck(4, packet.packet_id))

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError, ssl.SSLError):
            pass


async def connack_code(port: int, client_id: str, version: int = 5, local: str | None = None,
                       **credentials) -> int:
    client = await WireClient.open(port, version, local=local)
    try:
        return (await client.connect(client_id, **credentials)).reason_code
    finally:
        await client.close()
