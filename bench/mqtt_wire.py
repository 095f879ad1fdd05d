"""The few MQTT 3.1.1 packets the connection clients need, as bytes: CONNECT, CONNACK, PINGREQ, DISCONNECT.

The connect-rate and idle-memory clients use these instead of a client library so that the client side of
a connection costs as little as possible: one ``sendall`` for CONNECT, one 4-byte read for CONNACK.
"""

from __future__ import annotations

DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
CONNACK_LENGTH = 4


class ProtocolError(RuntimeError):
    pass


def _encode_remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 65535:
        raise ValueError("MQTT string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, keepalive: int = 0, clean_session: bool = True) -> bytes:
    """A 3.1.1 CONNECT without will, username or password."""
    if not 0 <= keepalive <= 65535:
        raise ValueError(f"keepalive out of range: {keepalive}")
    flags = 0x02 if clean_session else 0x00
    variable = _utf8("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    body = variable + _utf8(client_id)
    return b"\x10" + _encode_remaining_length(len(body)) + body


def check_connack(data: bytes) -> None:
    """Raise ProtocolError unless ``data`` is a 3.1.1 CONNACK that accepted the connection."""
    if len(data) != CONNACK_LENGTH or data[0] != 0x20 or data[1] != 0x02:
        raise ProtocolError(f"expected CONNACK, got {data!r}")
    if data[3] != 0:
        raise ProtocolError(f"connection refused, return code {data[3]}")
