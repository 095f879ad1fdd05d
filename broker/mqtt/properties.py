"""MQTT 5.0 properties: identifiers, wire types, which packets may carry them, and their codec.

Properties travel as a plain dict keyed by the names below. ``user_property`` is a list of ``(key, value)``
string pairs; ``subscription_identifier`` is a list of ints (a PUBLISH may carry several).

Limits (hostile input): ``decode_properties`` takes an optional ``PropertyLimits``. The block's byte length is
checked before anything in it is read, and the number of properties is counted while reading, so a block of
200,000 user properties stops being parsed at the first one over the cap instead of building 200,000 tuples.
Either refusal is ``FrameError(0x95 packet too large)`` naming the limit.
"""

from __future__ import annotations

from struct import pack, unpack_from

from . import reason_codes as rc
from .packets import Buffer, FrameError, Properties

# Wire types.
BYTE, U16, U32, VARINT, STR, BIN, PAIR = range(7)

# Packet types (duplicated from packets.py to keep this module free of cycles).
_CONNECT, _CONNACK, _PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = 1, 2, 3, 4, 5, 6, 7
_SUBSCRIBE, _SUBACK, _UNSUBSCRIBE, _UNSUBACK, _DISCONNECT, _AUTH = 8, 9, 10, 11, 14, 15
WILL = 0  # pseudo packet type: the will properties inside CONNECT

_ACKS = {_PUBACK, _PUBREC, _PUBREL, _PUBCOMP}

# id: (name, wire type, packet types that may carry it)
PROPERTIES: dict[int, tuple[str, int, frozenset[int]]] = {
    0x01: ("payload_format_indicator", BYTE, frozenset({_PUBLISH, WILL})),
    0x02: ("message_expiry_interval", U32, frozenset({_PUBLISH, WILL})),
    0x03: ("content_type", STR, frozenset({_PUBLISH, WILL})),
    0x08: ("response_topic", STR, frozenset({_PUBLISH, WILL})),
    0x09: ("correlation_data", BIN, frozenset({_PUBLISH, WILL})),
    0x0B: ("subscription_identifier", VARINT, frozenset({_PUBLISH, _SUBSCRIBE})),
    0x11: ("session_expiry_interval", U32, frozenset({_CONNECT, _CONNACK, _DISCONNECT})),
    0x12: ("assigned_client_identifier", STR, frozenset({_CONNACK})),
    0x13: ("server_keep_alive", U16, frozenset({_CONNACK})),
    0x15: ("authentication_method", STR, frozenset({_CONNECT, _CONNACK, _AUTH})),
    0x16: ("authentication_data", BIN, frozenset({_CONNECT, _CONNACK, _AUTH})),
    0x17: ("request_problem_information", BYTE, frozenset({_CONNECT})),
    0x18: ("will_delay_interval", U32, frozenset({WILL})),
    0x19: ("request_response_information", BYTE, frozenset({_CONNECT})),
    0x1A: ("response_information", STR, frozenset({_CONNACK})),
    0x1C: ("server_reference", STR, frozenset({_CONNACK, _DISCONNECT})),
    0x1F: ("reason_string", STR, frozenset({_CONNACK, _SUBACK, _UNSUBACK, _DISCONNECT, _AUTH} | _ACKS)),
    0x21: ("receive_maximum", U16, frozenset({_CONNECT, _CONNACK})),
    0x22: ("topic_alias_maximum", U16, frozenset({_CONNECT, _CONNACK})),
    0x23: ("topic_alias", U16, frozenset({_PUBLISH})),
    0x24: ("maximum_qos", BYTE, frozenset({_CONNACK})),
    0x25: ("retain_available", BYTE, frozenset({_CONNACK})),
    0x26: ("user_property", PAIR, frozenset({_CONNECT, _CONNACK, _PUBLISH, WILL, _SUBSCRIBE, _SUBACK,
                                              _UNSUBSCRIBE, _UNSUBACK, _DISCONNECT, _AUTH} | _ACKS)),
    0x27: ("maximum_packet_size", U32, frozenset({_CONNECT, _CONNACK})),
    0x28: ("wildcard_subscription_available", BYTE, frozenset({_CONNACK})),
    0x29: ("subscription_identifier_available", BYTE, frozenset({_CONNACK})),
    0x2A: ("shared_subscription_available", BYTE, frozenset({_CONNACK})),
}

BY_NAME: dict[str, tuple[int, int]] = {name: (pid, wtype) for pid, (name, wtype, _) in PROPERTIES.items()}

# Properties that must not be zero when present.
_NONZERO = {"receive_maximum", "maximum_packet_size", "subscription_identifier"}
# Byte properties whose only legal values are 0 and 1.
_BOOLEAN = {"payload_format_indicator", "request_problem_information", "request_response_information",
            "retain_available", "wildcard_subscription_available", "subscription_identifier_available",
            "shared_subscription_available"}


class PropertyLimits:
    """Caps for one property block: ``max_user`` user properties and ``max_bytes`` bytes (length prefix not
    counted). Every other property may appear at most once (subscription identifiers aside), so the total
    count is capped at ``max_user`` plus one of each other kind; a flood of repeated subscription
    identifiers is refused as a flood of user properties would be. ``names`` are the config keys reported."""

    __slots__ = ("max_user", "max_total", "max_bytes", "user_name", "bytes_name")

    def __init__(self, max_user: int, max_bytes: int, user_name: str = "max_user_properties",
                 bytes_name: str = "max_properties_size") -> None:
        self.max_user = max_user
        self.max_total = max_user + len(PROPERTIES)
        self.max_bytes = max_bytes
        self.user_name = user_name
        self.bytes_name = bytes_name


def _too_many(limits: PropertyLimits, what: str) -> FrameError:
    return FrameError(rc.PACKET_TOO_LARGE, f"more than {limits.max_user} {what} in one property block",
                      limits.user_name)


def _malformed(what: str) -> FrameError:
    return FrameError(rc.MALFORMED_PACKET, what)


def read_varint(data: Buffer, pos: int, end: int) -> tuple[int, int]:
    """A variable byte integer at ``pos``: (value, position after it)."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise _malformed("truncated variable byte integer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise _malformed("variable byte integer longer than four bytes")


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_string(data: Buffer, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise _malformed("truncated string length")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise _malformed("truncated string")
    try:
        text = str(data[pos + 2:stop], "utf-8")
    except UnicodeDecodeError:
        raise _malformed("string is not well-formed UTF-8") from None
    if "\x00" in text:
        raise _malformed("string contains U+0000")
    return text, stop


def read_binary(data: Buffer, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise _malformed("truncated binary length")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise _malformed("truncated binary data")
    return bytes(data[pos + 2:stop]), stop


def encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return pack("!H", len(raw)) + raw


def encode_binary(raw: bytes) -> bytes:
    return pack("!H", len(raw)) + raw


# Long on purpose: one branch per property type, on the hot path.
def decode_properties(data: Buffer, pos: int, end: int, packet_type: int,  # noqa: C901
                      limits: PropertyLimits | None = None) -> tuple[Properties, int]:
    """The property block at ``pos`` (length prefix included): (properties, position after the block)."""
    length, pos = read_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise _malformed("property length exceeds the packet")
    props: Properties = {}
    if limits is None:
        budget = -1  # never reaches 0
    else:
        if length > limits.max_bytes:
            raise FrameError(rc.PACKET_TOO_LARGE, f"property block of {length} bytes exceeds the limit of "
                             f"{limits.max_bytes}", limits.bytes_name)
        budget = limits.max_total + 1
        users = limits.max_user
    while pos < stop:
        budget -= 1
        if not budget:
            assert limits is not None  # only then does the budget count down to 0
            raise _too_many(limits, "properties")
        pid, pos = read_varint(data, pos, stop)
        spec = PROPERTIES.get(pid)
        if spec is None:
            raise _malformed(f"unknown property 0x{pid:02x}")
        name, wtype, allowed = spec
        if packet_type not in allowed:
            raise FrameError(rc.PROTOCOL_ERROR, f"property {name} not allowed in this packet")
        value: int | str | bytes
        if wtype == BYTE:
            if pos >= stop:
                raise _malformed("truncated property")
            value = data[pos]
            pos += 1
            if name in _BOOLEAN and value > 1:
                raise FrameError(rc.PROTOCOL_ERROR, f"{name} must be 0 or 1")
            if name == "maximum_qos" and value > 1:
                raise FrameError(rc.PROTOCOL_ERROR, "maximum_qos must be 0 or 1")
        elif wtype == U16:
            if pos + 2 > stop:
                raise _malformed("truncated property")
            value = (data[pos] << 8) | data[pos + 1]
            pos += 2
        elif wtype == U32:
            if pos + 4 > stop:
                raise _malformed("truncated property")
            value = unpack_from("!I", data, pos)[0]
            pos += 4
        elif wtype == VARINT:
            value, pos = read_varint(data, pos, stop)
        elif wtype == STR:
            value, pos = read_string(data, pos, stop)
        elif wtype == BIN:
            value, pos = read_binary(data, pos, stop)
        else:  # PAIR
            if limits is not None:
                users -= 1
                if users < 0:
                    raise _too_many(limits, "user properties")
            key, pos = read_string(data, pos, stop)
            val, pos = read_string(data, pos, stop)
            props.setdefault(name, []).append((key, val))
            continue
        if name in _NONZERO and value == 0:
            raise FrameError(rc.PROTOCOL_ERROR, f"{name} must not be 0")
        if name == "subscription_identifier":
            if packet_type == _SUBSCRIBE and name in props:
                raise FrameError(rc.PROTOCOL_ERROR, "subscription_identifier given twice")
            props.setdefault(name, []).append(value)
            continue
        if name in props:
            raise FrameError(rc.PROTOCOL_ERROR, f"property {name} given twice")
        props[name] = value
    return props, stop


def encode_properties(props: Properties | None) -> bytes:
    """The property block for ``props`` (length prefix included); ``b"\\x00"`` when empty."""
    if not props:
        return b"\x00"
    out = bytearray()
    for name, value in props.items():
        pid, wtype = BY_NAME[name]
        if wtype == PAIR:
            for key, val in value:
                out.append(pid)
                out += encode_string(key)
                out += encode_string(val)
            continue
        if name == "subscription_identifier":
            for sub_id in value:
                out.append(pid)
                out += encode_varint(sub_id)
            continue
        out.append(pid)
        if wtype == BYTE:
            out.append(value)
        elif wtype == U16:
            out += pack("!H", value)
        elif wtype == U32:
            out += pack("!I", value)
        elif wtype == VARINT:
            out += encode_varint(value)
        elif wtype == STR:
            out += encode_string(value)
        else:
            out += encode_binary(value)
    return encode_varint(len(out)) + bytes(out)
