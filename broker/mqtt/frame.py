"""The MQTT packet codec: an incremental parser and the serialisers.

``Parser.feed(data)`` takes whatever the socket delivered and returns the complete packets in it. Bytes of an
unfinished packet are kept for the next call; the packet size limit is checked as soon as a fixed header is
complete, before the body is waited for. Complete packets are decoded straight out of the received ``bytes``
(the common case: whole packets per read), so there is no buffer copy unless a packet straddles reads.

Bad input raises ``FrameError`` and nothing else; its ``reason_code`` says why (0x81 malformed, 0x82 protocol
error, 0x84 unsupported protocol version, 0x95 packet too large) and its ``packets`` holds what was decoded
before the bad packet.

Limits for hostile input (a server-side parser; a fresh ``Parser`` has none beyond the packet size):
``property_limits`` caps every property block as it is read (``properties.PropertyLimits``),
``max_topic_filters`` the topic filters of one SUBSCRIBE / UNSUBSCRIBE as they are read, ``size_limit``
names the packet size limit in errors, and ``single`` makes ``feed`` stop after one packet and keep the rest
as raw bytes. The connection uses that until its CONNACK is sent: only the CONNECT is parsed, under the
stricter ``connect_*`` limits, and what follows it waits for the normal ones (``feed(b"")`` parses it then).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from struct import Struct, pack
from typing import Any

from . import reason_codes as rc
from .packets import (AUTH, CONNACK, CONNECT, DISCONNECT, MQTT_3_1, MQTT_3_1_1, MQTT_5, PINGREQ, PINGRESP,
                      PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, Auth,
                      Connack, Connect, Disconnect, FrameError, PingReq, PingResp, PubAck, Publish, Suback,
                      Packet, Properties, SubOptions, Subscribe, Unsuback, Unsubscribe, Will)
from .properties import (WILL, PropertyLimits, decode_properties, encode_binary, encode_properties, encode_string,
                         encode_varint, read_binary, read_string)

__all__ = ["FrameError", "Parser", "PINGRESP_BYTES", "encode", "encode_ack", "encode_connack", "encode_disconnect",
           "encode_puback", "encode_pubcomp", "encode_publish_parts", "encode_pubrec", "encode_pubrel",
           "encode_suback", "encode_unsuback", "fixed_header"]

# The fixed-header flags each packet type must carry (PUBLISH's are free).
_REQUIRED_FLAGS = {CONNECT: 0, CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2, SUBACK: 0,
                   UNSUBSCRIBE: 2, UNSUBACK: 0, PINGREQ: 0, PINGRESP: 0, DISCONNECT: 0, AUTH: 0}

_PROTOCOL_NAMES = {MQTT_3_1: "MQIsdp", MQTT_3_1_1: "MQTT", MQTT_5: "MQTT"}

_PING_REQ = PingReq()
_PING_RESP = PingResp()


def _malformed(what: str) -> FrameError:
    return FrameError(rc.MALFORMED_PACKET, what)


class Parser:
    """Incremental decoder for one connection.

    ``version`` is the protocol version the packets are read with; a CONNECT sets it (a server-side parser
    starts out not knowing it). ``max_packet_size`` bounds the whole packet, fixed header included.
    """

    __slots__ = ("version", "max_packet_size", "size_limit", "property_limits", "max_topic_filters", "single",
                 "_buffer", "_need")

    def __init__(self, max_packet_size: int = 268435460, version: int = MQTT_3_1_1,
                 property_limits: PropertyLimits | None = None) -> None:
        self.version = version
        self.max_packet_size = max_packet_size
        self.size_limit = "max_packet_size"
        self.property_limits = property_limits
        # Topic filters in one SUBSCRIBE / UNSUBSCRIBE at most (None: no limit); counted while decoding.
        self.max_topic_filters: int | None = None
        self.single = False
        # The bytes of an unfinished packet; None while there are none (most of an idle connection's life).
        self._buffer: bytearray | None = None
        self._need = 0  # total size of the packet being buffered, once its fixed header is known

    @property
    def buffered(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    def keep(self, data: bytes) -> None:
        """Buffer ``data`` unparsed (a later ``feed`` parses it with the limits in force then)."""
        if self._buffer is None:
            self._buffer = bytearray(data)
        else:
            self._buffer += data

    def feed(self, data: bytes) -> list[Packet]:
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []
            data = bytes(buffer)
            self._buffer = None
        packets: list[Packet] = []
        try:
            pos = self._parse(data, packets)
        except FrameError as error:
            error.packets = packets
            self._buffer = None
            raise
        if pos < len(data):
            self._buffer = bytearray(memoryview(data)[pos:])
        return packets

    def _parse(self, data: bytes, packets: list[Packet]) -> int:
        """Decode every complete packet in ``data``; returns where the unfinished rest starts."""
        end = len(data)
        pos = 0
        limit = self.max_packet_size
        decode_publish = self._decode_publish
        while end - pos >= 2:
            header = data[pos]
            # Remaining length: up to four bytes, little-endian groups of seven bits.
            byte = data[pos + 1]
            if byte < 0x80:
                length = byte
                body = pos + 2
            else:
                length = byte & 0x7F
                shift = 7
                body = pos + 2
                while True:
                    if body >= end:
                        self._need = 0
                        return pos
                    byte = data[body]
                    body += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise _malformed("remaining length longer than four bytes")
            total = body - pos + length
            if total > limit:
                raise FrameError(rc.PACKET_TOO_LARGE, f"packet of {total} bytes exceeds the limit of {limit}",
                                 self.size_limit)
            stop = body + length
            if stop > end:
                self._need = total
                return pos
            if header >> 4 == PUBLISH:
                packets.append(decode_publish(header, data, body, stop))
            else:
                packets.append(self._decode_other(header, data, body, stop))
            pos = stop
            if self.single:
                break
        self._need = 0
        return pos

    def _decode_publish(self, header: int, data: bytes, pos: int, end: int) -> Publish:
        qos = (header >> 1) & 3
        if qos == 3:
            raise _malformed("PUBLISH with QoS 3")
        dup = bool(header & 8)
        if dup and not qos:
            raise _malformed("PUBLISH with DUP set at QoS 0")
        if pos + 2 > end:
            raise _malformed("truncated topic length")
        stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
        if stop > end:
            raise _malformed("truncated topic")
        try:
            topic = str(data[pos + 2:stop], "utf-8")
        except UnicodeDecodeError:
            raise _malformed("topic is not well-formed UTF-8") from None
        if "\x00" in topic:
            raise _malformed("topic contains U+0000")
        pos = stop
        packet_id = None
        if qos:
            if pos + 2 > end:
                raise _malformed("truncated packet identifier")
            packet_id = (data[pos] << 8) | data[pos + 1]
            if not packet_id:
                raise _malformed("packet identifier 0")
            pos += 2
        properties = None
        if self.version == MQTT_5:
            if pos < end and data[pos] == 0:
                pos += 1
            else:
                properties, pos = decode_properties(data, pos, end, PUBLISH, self.property_limits)
        return Publish(topic, data[pos:end], qos, bool(header & 1), dup, packet_id, properties)

    # Long on purpose: one branch per packet type, on the hot path.
    def _decode_other(self, header: int, data: bytes, pos: int, end: int) -> Packet:  # noqa: C901
        ptype = header >> 4
        flags = header & 0x0F
        required = _REQUIRED_FLAGS.get(ptype)
        if required is None:
            raise _malformed("reserved packet type 0")
        if flags != required:
            raise _malformed(f"bad fixed header flags 0x{flags:x} for packet type {ptype}")
        v5 = self.version == MQTT_5
        limits = self.property_limits
        if ptype == PINGREQ or ptype == PINGRESP:
            if end != pos:
                raise _malformed("PINGREQ/PINGRESP with a body")
            return _PING_REQ if ptype == PINGREQ else _PING_RESP
        if PUBACK <= ptype <= PUBCOMP:
            return self._decode_ack(ptype, data, pos, end, v5, limits)
        if ptype == CONNECT:
            return self._decode_connect(data, pos, end)
        if ptype == SUBSCRIBE:
            return self._decode_subscribe(data, pos, end, v5, limits, self.max_topic_filters)
        if ptype == UNSUBSCRIBE:
            packet_id, pos = _packet_id(data, pos, end)
            properties: Properties = {}
            if v5:
                properties, pos = decode_properties(data, pos, end, UNSUBSCRIBE, limits)
            filters = []
            room = self.max_topic_filters
            while pos < end:
                if room is not None:
                    room -= 1
                    if room < 0:
                        assert self.max_topic_filters is not None  # room counts down only under a limit
                        raise _too_many_filters(self.max_topic_filters)
                topic_filter, pos = read_string(data, pos, end)
                filters.append(topic_filter)
            if not filters:
                raise FrameError(rc.PROTOCOL_ERROR, "UNSUBSCRIBE without topic filters")
            return Unsubscribe(packet_id, filters, properties)
        if ptype == DISCONNECT:
            if not v5:
                if end != pos:
                    raise _malformed("3.1.1 DISCONNECT with a body")
                return Disconnect()
            reason, properties = _reason_and_properties(data, pos, end, DISCONNECT, limits)
            return Disconnect(reason, properties)
        if ptype == AUTH:
            if not v5:
                raise _malformed("AUTH before MQTT 5.0")
            reason, properties = _reason_and_properties(data, pos, end, AUTH, limits)
            return Auth(reason, properties)
        if ptype == CONNACK:
            if pos + 2 > end:
                raise _malformed("truncated CONNACK")
            ack_flags = data[pos]
            if ack_flags > 1:
                raise _malformed("reserved CONNACK flags")
            reason = data[pos + 1]
            properties = {}
            pos += 2
            if v5:
                properties, pos = decode_properties(data, pos, end, CONNACK, limits)
            if pos != end:
                raise _malformed("trailing bytes in CONNACK")
            return Connack(bool(ack_flags), reason, properties)
        if ptype == SUBACK:
            packet_id, pos = _packet_id(data, pos, end)
            properties = {}
            if v5:
                properties, pos = decode_properties(data, pos, end, SUBACK, limits)
            codes = list(data[pos:end])
            if not codes:
                raise _malformed("SUBACK without reason codes")
            return Suback(packet_id, codes, properties)
        # UNSUBACK
        packet_id, pos = _packet_id(data, pos, end)
        if not v5:
            if pos != end:
                raise _malformed("3.1.1 UNSUBACK with a payload")
            return Unsuback(packet_id)
        properties, pos = decode_properties(data, pos, end, UNSUBACK, limits)
        codes = list(data[pos:end])
        if not codes:
            raise _malformed("UNSUBACK without reason codes")
        return Unsuback(packet_id, codes, properties)

    @staticmethod
    def _decode_ack(ptype: int, data: bytes, pos: int, end: int, v5: bool, limits: PropertyLimits | None) -> PubAck:
        packet_id, pos = _packet_id(data, pos, end)
        if not v5:
            if pos != end:
                raise _malformed("trailing bytes in acknowledgement")
            return PubAck(ptype, packet_id)
        if pos == end:
            return PubAck(ptype, packet_id)
        reason = data[pos]
        pos += 1
        properties: Properties = {}
        if pos < end:
            properties, pos = decode_properties(data, pos, end, ptype, limits)
            if pos != end:
                raise _malformed("trailing bytes in acknowledgement")
        return PubAck(ptype, packet_id, reason, properties)

    def _decode_connect(self, data: bytes, pos: int, end: int) -> Connect:
        name, pos = read_string(data, pos, end)
        if pos + 4 > end:
            raise _malformed("truncated CONNECT variable header")
        version = data[pos]
        if name not in ("MQTT", "MQIsdp"):
            raise FrameError(rc.UNSUPPORTED_PROTOCOL_VERSION, f"unknown protocol name {name!r}")
        if version not in _PROTOCOL_NAMES or _PROTOCOL_NAMES[version] != name:
            raise FrameError(rc.UNSUPPORTED_PROTOCOL_VERSION, f"unsupported protocol {name!r} level {version}")
        # From here on the connection speaks this version, including in the error it may get next.
        self.version = version
        flags = data[pos + 1]
        keepalive = (data[pos + 2] << 8) | data[pos + 3]
        pos += 4
        if flags & 0x01:
            raise _malformed("reserved CONNECT flag set")
        will_flag = flags & 0x04
        will_qos = (flags >> 3) & 3
        will_retain = bool(flags & 0x20)
        if will_qos == 3:
            raise _malformed("will QoS 3")
        if not will_flag and (will_qos or will_retain):
            raise _malformed("will QoS or retain without a will")
        has_username = flags & 0x80
        has_password = flags & 0x40
        if has_password and not has_username and version != MQTT_5:
            raise _malformed("password without user name")
        properties: Properties = {}
        if version == MQTT_5:
            properties, pos = decode_properties(data, pos, end, CONNECT, self.property_limits)
        client_id, pos = read_string(data, pos, end)
        will = None
        if will_flag:
            will_props: Properties = {}
            if version == MQTT_5:
                will_props, pos = decode_properties(data, pos, end, WILL, self.property_limits)
            will_topic, pos = read_string(data, pos, end)
            will_payload, pos = read_binary(data, pos, end)
            will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
        username = password = None
        if has_username:
            username, pos = read_string(data, pos, end)
        if has_password:
            password, pos = read_binary(data, pos, end)
        if pos != end:
            raise _malformed("trailing bytes in CONNECT")
        return Connect(version, client_id, bool(flags & 0x02), keepalive, username, password, will, properties)

    @staticmethod
    def _decode_subscribe(data: bytes, pos: int, end: int, v5: bool, limits: PropertyLimits | None,
                          max_filters: int | None) -> Subscribe:
        packet_id, pos = _packet_id(data, pos, end)
        properties: Properties = {}
        if v5:
            properties, pos = decode_properties(data, pos, end, SUBSCRIBE, limits)
        topics = []
        room = max_filters
        while pos < end:
            if room is not None:
                room -= 1
                if room < 0:
                    assert max_filters is not None  # room counts down only under a limit
                    raise _too_many_filters(max_filters)
            topic_filter, pos = read_string(data, pos, end)
            if pos >= end:
                raise _malformed("subscription without options")
            options = data[pos]
            pos += 1
            qos = options & 3
            if qos == 3:
                raise _malformed("subscription QoS 3")
            if v5:
                if options & 0xC0:
                    raise _malformed("reserved subscription option bits set")
                retain_handling = (options >> 4) & 3
                if retain_handling == 3:
                    raise _malformed("retain handling 3")
                topics.append((topic_filter, SubOptions(qos, bool(options & 4), bool(options & 8),
                                                        retain_handling)))
            else:
                if options & 0xFC:
                    raise _malformed("reserved subscription option bits set")
                topics.append((topic_filter, SubOptions(qos)))
        if not topics:
            raise FrameError(rc.PROTOCOL_ERROR, "SUBSCRIBE without topic filters")
        return Subscribe(packet_id, topics, properties)


def _too_many_filters(limit: int) -> FrameError:
    return FrameError(rc.PACKET_TOO_LARGE, f"more than {limit} topic filters in one packet",
                      "max_topic_filters_per_packet")


def _packet_id(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise _malformed("truncated packet identifier")
    packet_id = (data[pos] << 8) | data[pos + 1]
    if not packet_id:
        raise _malformed("packet identifier 0")
    return packet_id, pos + 2


def _reason_and_properties(data: bytes, pos: int, end: int, ptype: int,
                           limits: PropertyLimits | None = None) -> tuple[int, Properties]:
    if pos == end:
        return 0, {}
    reason = data[pos]
    pos += 1
    properties: Properties = {}
    if pos < end:
        properties, pos = decode_properties(data, pos, end, ptype, limits)
        if pos != end:
            raise _malformed("trailing bytes after properties")
    return reason, properties


# ---------------------------------------------------------------------------------------------------- encoding

def fixed_header(first_byte: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((first_byte, length))
    return bytes((first_byte,)) + encode_varint(length)


def encode_publish_parts(topic: str, payload: bytes, qos: int, retain: bool, dup: bool,
                         properties: Properties | None, version: int) -> tuple[bytes, bytes]:
    """A PUBLISH as (head, tail) with the packet identifier left out between them.

    At QoS 0 ``head + tail`` is the whole packet; at QoS 1/2 the two-byte packet identifier goes in between.
    This lets one encoding serve every subscriber that gets the same wire form.
    """
    topic_raw = topic.encode("utf-8")
    topic_len = len(topic_raw)
    props = (encode_properties(properties) if properties else b"\x00") if version == MQTT_5 else b""
    length = 2 + topic_len + (2 if qos else 0) + len(props) + len(payload)
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    if length < 0x80 and topic_len < 0x100:  # the common small message: one bytes() call for the header
        head = bytes((first, length, 0, topic_len)) + topic_raw
    else:
        head = fixed_header(first, length) + pack("!H", topic_len) + topic_raw
    return head, props + payload if props else payload


def encode_publish(packet: Publish, version: int) -> bytes:
    head, tail = encode_publish_parts(packet.topic, packet.payload, packet.qos, packet.retain, packet.dup,
                                      packet.properties, version)
    if packet.qos:
        return head + pack("!H", packet.packet_id) + tail
    return head + tail


def _with_header(first_byte: int, body: bytes) -> bytes:
    return fixed_header(first_byte, len(body)) + body


# ------------------------------------------------------------------------------------------ acknowledgements
#
# What the server answers with. The plain PUBACK/PUBREC/PUBREL/PUBCOMP (success, no properties, the same bytes in
# 3.1.1 and 5.0) are on the QoS 1/2 hot path: each is one C call, a struct packing the packet's first two bytes
# (type and flags, remaining length 2) with the packet identifier.

_ACK_FORM = Struct("!HH")
encode_puback: Callable[[int], bytes] = partial(_ACK_FORM.pack, 0x4002)
encode_pubrec: Callable[[int], bytes] = partial(_ACK_FORM.pack, 0x5002)
encode_pubrel: Callable[[int], bytes] = partial(_ACK_FORM.pack, 0x6202)
encode_pubcomp: Callable[[int], bytes] = partial(_ACK_FORM.pack, 0x7002)
PINGRESP_BYTES = b"\xd0\x00"


def encode_ack(kind: int, packet_id: int, reason_code: int = 0, properties: Properties | None = None,
               version: int = MQTT_5) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (``kind``) with a reason code and properties (5.0; 3.1.1 has neither)."""
    first = (kind << 4) | (2 if kind == PUBREL else 0)
    if version != MQTT_5 or (reason_code == 0 and not properties):
        return _ACK_FORM.pack((first << 8) | 2, packet_id)
    body = pack("!HB", packet_id, reason_code)
    if properties:
        body += encode_properties(properties)
    return _with_header(first, body)


def encode_connack(session_present: bool, reason_code: int, properties: Properties | None, version: int) -> bytes:
    """CONNACK; ``reason_code`` is already in the version's terms (``reason_codes.connack_v3`` for 3.1.1)."""
    body = bytes((1 if session_present else 0, reason_code))
    if version == MQTT_5:
        body += encode_properties(properties or {})
    return _with_header(0x20, body)


def encode_suback(packet_id: int, reason_codes: list[int], properties: Properties | None, version: int) -> bytes:
    body = pack("!H", packet_id)
    if version == MQTT_5:
        body += encode_properties(properties or {})
    return _with_header(0x90, body + bytes(reason_codes))


def encode_unsuback(packet_id: int, reason_codes: list[int] | None, properties: Properties | None,
                    version: int) -> bytes:
    """UNSUBACK; 3.1.1 carries neither reason codes nor properties."""
    body = pack("!H", packet_id)
    if version == MQTT_5:
        body += encode_properties(properties or {}) + bytes(reason_codes or ())
    return _with_header(0xB0, body)


def encode_disconnect(reason_code: int, properties: Properties | None, version: int) -> bytes:
    """DISCONNECT; 3.1.1 (and a plain 5.0 normal disconnection) is the two bytes ``e0 00``."""
    if version != MQTT_5 or (reason_code == 0 and not properties):
        return b"\xe0\x00"
    return _with_header(0xE0, bytes((reason_code,)) + encode_properties(properties or {}))


# ``packet`` is Any: the branches dispatch on ``packet.type``, which mypy cannot narrow the Packet union by.
def encode(packet: Any, version: int) -> bytes:  # noqa: C901 - one branch per packet type, on the hot path
    """The wire form of any packet for a connection speaking ``version``."""
    ptype = packet.type
    v5 = version == MQTT_5
    if ptype == PUBLISH:
        return encode_publish(packet, version)
    if PUBACK <= ptype <= PUBCOMP:
        return encode_ack(ptype, packet.packet_id, packet.reason_code, packet.properties, version)
    if ptype == PINGREQ:
        return b"\xc0\x00"
    if ptype == PINGRESP:
        return PINGRESP_BYTES
    if ptype == CONNACK:
        return encode_connack(packet.session_present, packet.reason_code, packet.properties, version)
    if ptype == SUBACK:
        return encode_suback(packet.packet_id, packet.reason_codes, packet.properties, version)
    if ptype == UNSUBACK:
        return encode_unsuback(packet.packet_id, packet.reason_codes, packet.properties, version)
    if ptype == DISCONNECT:
        return encode_disconnect(packet.reason_code, packet.properties, version)
    if ptype == AUTH:
        if packet.reason_code == 0 and not packet.properties:
            return b"\xf0\x00"
        return _with_header(0xF0, bytes((packet.reason_code,)) + encode_properties(packet.properties))
    if ptype == SUBSCRIBE:
        body = pack("!H", packet.packet_id)
        if v5:
            body += encode_properties(packet.properties)
        for topic_filter, opts in packet.topics:
            options = opts.qos
            if v5:
                options |= (4 if opts.no_local else 0) | (8 if opts.retain_as_published else 0)
                options |= opts.retain_handling << 4
            body += encode_string(topic_filter) + bytes((options,))
        return _with_header(0x82, body)
    if ptype == UNSUBSCRIBE:
        body = pack("!H", packet.packet_id)
        if v5:
            body += encode_properties(packet.properties)
        for topic_filter in packet.filters:
            body += encode_string(topic_filter)
        return _with_header(0xA2, body)
    if ptype == CONNECT:
        return _encode_connect(packet)
    raise ValueError(f"cannot encode packet type {ptype}")


def _encode_connect(packet: Connect) -> bytes:
    version = packet.version
    flags = 0x02 if packet.clean_start else 0
    will = packet.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        flags |= 0x40
    body = encode_string(_PROTOCOL_NAMES[version]) + bytes((version, flags)) + pack("!H", packet.keepalive)
    if version == MQTT_5:
        body += encode_properties(packet.properties)
    body += encode_string(packet.client_id)
    if will is not None:
        if version == MQTT_5:
            body += encode_properties(will.properties)
        body += encode_string(will.topic) + encode_binary(will.payload)
    if packet.username is not None:
        body += encode_string(packet.username)
    if packet.password is not None:
        body += encode_binary(packet.password)
    return _with_header(0x10, body)
