"""MQTT control packets as small slotted objects, and the codec's error.

One class per packet type, except the four publish acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP), which
share ``PubAck`` and differ by ``type``. Properties are dicts (see ``properties.py``); ``None`` or ``{}`` means
none. Protocol versions: 3 (MQTT 3.1), 4 (3.1.1), 5 (5.0).
"""

from __future__ import annotations

from typing import Any

# Property name -> value (an int, str or bytes; a list for user properties and subscription identifiers).
Properties = dict[str, Any]
# What the decoder reads from.
Buffer = bytes | bytearray | memoryview

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

NAMES = {CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK", PUBREC: "PUBREC",
         PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK",
         UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
         DISCONNECT: "DISCONNECT", AUTH: "AUTH"}

MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5


class FrameError(Exception):
    """Bad bytes on the wire. ``reason_code`` is the 5.0 reason code to report (0x81 malformed, ...)."""

    def __init__(self, reason_code: int, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        # The configured limit (``wharf_limit_exceeded_total{limit}``) when a limit, not bad bytes, refused it.
        self.limit = limit
        # Packets decoded from the same chunk before the bad one (``Parser.feed`` fills this in).
        self.packets: list[Packet] = []


class _Packet:
    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Will(_Packet):
    __slots__ = ("topic", "payload", "qos", "retain", "properties")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: Properties | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties or {}


class Connect(_Packet):
    __slots__ = ("version", "client_id", "clean_start", "keepalive", "username", "password", "will",
                 "properties")
    type = CONNECT

    def __init__(self, version: int = MQTT_3_1_1, client_id: str = "", clean_start: bool = True,
                 keepalive: int = 60, username: str | None = None, password: bytes | None = None,
                 will: Will | None = None, properties: Properties | None = None) -> None:
        self.version = version
        self.client_id = client_id
        self.clean_start = clean_start
        self.keepalive = keepalive
        self.username = username
        self.password = password
        self.will = will
        self.properties = properties or {}


class Connack(_Packet):
    __slots__ = ("session_present", "reason_code", "properties")
    type = CONNACK

    def __init__(self, session_present: bool = False, reason_code: int = 0,
                 properties: Properties | None = None) -> None:
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = properties or {}


class Publish(_Packet):
    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
    type = PUBLISH

    def __init__(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, dup: bool = False,
                 packet_id: int | None = None, properties: Properties | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = properties


class PubAck(_Packet):
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    __slots__ = ("type", "packet_id", "reason_code", "properties")

    def __init__(self, type: int, packet_id: int, reason_code: int = 0, properties: Properties | None = None) -> None:
        self.type = type
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties or {}


class SubOptions(_Packet):
    __slots__ = ("qos", "no_local", "retain_as_published", "retain_handling")

    def __init__(self, qos: int = 0, no_local: bool = False, retain_as_published: bool = False,
                 retain_handling: int = 0) -> None:
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling


class Subscribe(_Packet):
    __slots__ = ("packet_id", "topics", "properties")
    type = SUBSCRIBE

    def __init__(self, packet_id: int, topics: list[tuple[str, SubOptions]],
                 properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.topics = topics
        self.properties = properties or {}


class Suback(_Packet):
    __slots__ = ("packet_id", "reason_codes", "properties")
    type = SUBACK

    def __init__(self, packet_id: int, reason_codes: list[int], properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.reason_codes = reason_codes
        self.properties = properties or {}


class Unsubscribe(_Packet):
    __slots__ = ("packet_id", "filters", "properties")
    type = UNSUBSCRIBE

    def __init__(self, packet_id: int, filters: list[str], properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.filters = filters
        self.properties = properties or {}


class Unsuback(_Packet):
    """In 3.1.1 an UNSUBACK carries no reason codes (``reason_codes`` is then empty)."""

    __slots__ = ("packet_id", "reason_codes", "properties")
    type = UNSUBACK

    def __init__(self, packet_id: int, reason_codes: list[int] | None = None,
                 properties: Properties | None = None) -> None:
        self.packet_id = packet_id
        self.reason_codes = reason_codes or []
        self.properties = properties or {}


class PingReq(_Packet):
    __slots__ = ()
    type = PINGREQ


class PingResp(_Packet):
    __slots__ = ()
    type = PINGRESP


class Disconnect(_Packet):
    __slots__ = ("reason_code", "properties")
    type = DISCONNECT

    def __init__(self, reason_code: int = 0, properties: Properties | None = None) -> None:
        self.reason_code = reason_code
        self.properties = properties or {}


class Auth(_Packet):
    __slots__ = ("reason_code", "properties")
    type = AUTH

    def __init__(self, reason_code: int = 0, properties: Properties | None = None) -> None:
        self.reason_code = reason_code
        self.properties = properties or {}


# Any control packet the codec reads or writes.
Packet = (Connect | Connack | Publish | PubAck | Subscribe | Suback | Unsubscribe | Unsuback | PingReq | PingResp
          | Disconnect | Auth)
