"""A raw MQTT client on the broker's own codec, for tests that need to see (or send) every packet as it is.

``WireClient`` speaks packet by packet over plain TCP or TLS, optionally from a chosen 127.0.0.0/8 address and
behind a PROXY protocol header sent before anything else (before the TLS handshake too). ``recv`` returns decoded
packets; ``send_raw`` writes any bytes at all. The helpers (``connect``, ``subscribe``, ``publish``, ``ack``,
``ping``) do the usual exchanges and return the broker's answer; messages that arrive while they wait for it stay
queued for ``recv``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

from wharf_broker.mqtt.frame import Parser, encode
from wharf_broker.mqtt.packets import (CONNACK, PINGRESP, PUBCOMP, PUBLISH, PUBREC, PUBREL, Connect, Disconnect,
                                       PingReq, PubAck, Publish, SubOptions, Subscribe, Unsubscribe)

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
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int = 5) -> None:
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

    # -- packets
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

    async def _answer(self, timeout: float = 5.0):
        """The next packet that is not a PUBLISH; the PUBLISHes before it stay queued for ``recv``."""
        deliveries = []
        while True:
            packet = await self.recv(timeout)
            if packet.type != PUBLISH:
                self.pending[:0] = deliveries
                return packet
            deliveries.append(packet)

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

    # -- exchanges
    async def connect(self, client_id: str = "", *, expiry: int | None = None, **fields):
        """CONNECT (``fields`` as ``packets.Connect`` takes them; ``expiry``: a 5.0 session expiry interval) and
        return the CONNACK, whatever its reason code."""
        if expiry and self.version == 5:
            fields["properties"] = {**(fields.get("properties") or {}), "session_expiry_interval": expiry}
        await self.send(Connect(version=self.version, client_id=client_id, **fields))
        ack = await self.recv()
        assert ack.type == CONNACK, ack
        return ack

    async def subscribe(self, *filters: str, qos: int = 0, properties: dict | None = None, **options):
        """SUBSCRIBE to ``filters`` (``options``: ``SubOptions`` fields) and return the SUBACK."""
        packet = Subscribe(self.packet_id(), [(f, SubOptions(qos, **options)) for f in filters], properties)
        await self.send(packet)
        ack = await self._answer()
        assert ack.packet_id == packet.packet_id, ack
        return ack

    async def unsubscribe(self, *filters: str):
        await self.send(Unsubscribe(self.packet_id(), list(filters)))
        return await self._answer()

    async def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                      properties: dict | None = None, packet_id: int | None = None):
        """PUBLISH; at QoS 1 returns the PUBACK, at QoS 2 completes the exchange and returns the PUBCOMP (or the
        PUBREC when it refuses the message)."""
        if qos and packet_id is None:
            packet_id = self.packet_id()
        await self.send(Publish(topic, payload, qos, retain, False, packet_id if qos else None, properties))
        if not qos:
            return None
        ack = await self._answer()
        if qos == 1 or ack.type != PUBREC or ack.reason_code >= 0x80:
            return ack
        await self.send(PubAck(PUBREL, packet_id))
        return await self._answer()

    async def ack(self, packet) -> None:
        """Acknowledge a received PUBLISH (PUBACK, or PUBREC + wait PUBREL + PUBCOMP)."""
        if packet.qos == 1:
            await self.send(PubAck(4, packet.packet_id))
        elif packet.qos == 2:
            await self.send(PubAck(PUBREC, packet.packet_id))
            rel = await self._answer()
            assert rel.type == PUBREL and rel.packet_id == packet.packet_id, rel
            await self.send(PubAck(PUBCOMP, packet.packet_id))

    async def ping(self, timeout: float = 60.0):
        """PINGREQ; returns the PINGRESP (anything arriving before it stays queued)."""
        await self.send(PingReq())
        skipped = []
        while True:
            packet = await self.recv(timeout)
            if packet.type == PINGRESP:
                self.pending[:0] = skipped
                return packet
            skipped.append(packet)

    async def disconnect(self, reason_code: int = 0, properties: dict | None = None) -> None:
        await self.send(Disconnect(reason_code, properties))
        await self.close()

    def drop(self) -> None:
        """Close the socket without a DISCONNECT and without waiting (a client that just goes away)."""
        self.writer.close()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError, ssl.SSLError):
            pass


async def connack_code(port: int, client_id: str, version: int = 5, local: str | None = None,
                       **credentials) -> int:
    """The reason code of the CONNACK a fresh connection gets for ``client_id`` (and ``credentials``)."""
    client = await WireClient.open(port, version, local=local)
    try:
        return (await client.connect(client_id, **credentials)).reason_code
    finally:
        await client.close()
