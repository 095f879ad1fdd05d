"""MQTT topics and filters as NATS subjects, and the envelope a message crosses NATS in.

A topic ``a/b/c`` becomes the subject ``wharf.<kind>.a.b.c``: each MQTT level is one NATS token. Characters a
NATS token cannot hold -- ``.``, ``*``, ``>``, whitespace, control and non-ASCII characters -- and ``%`` itself
are written ``%XX`` (the hex of each UTF-8 byte); an empty level is ``%_``. So every topic has exactly one
subject and no topic level can pose as a NATS wildcard. Filters map ``+`` to ``*``; ``a/#`` needs two subjects,
``a`` and ``a.>`` (``#`` also matches its parent level). ``$``-topics map like any other; the rule that root
wildcards do not match them is applied by the receiving node, which matches every message against its own
filters again.

``<kind>`` is ``m0`` for QoS 0 and ``m1`` for QoS 1/2 messages (only ``m1`` is captured by the JetStream
stream); receivers subscribe to ``wharf.*.<levels>`` and get both.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

PREFIX = "wharf"
QOS0_KIND = "m0"
DURABLE_KIND = "m1"
DURABLE_SUBJECTS = f"{PREFIX}.{DURABLE_KIND}.>"

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_$!\"#&'()+,/:;<=?@[\\]^`{|}~")


def encode_level(level: str) -> str:
    if not level:
        return "%_"
    if all(ch in _PLAIN for ch in level):
        return level
    out = []
    for ch in level:
        if ch in _PLAIN:
            out.append(ch)
        else:
            out.extend(f"%{byte:02X}" for byte in ch.encode("utf-8"))
    return "".join(out)


def topic_subject(topic: str, qos: int) -> str:
    kind = DURABLE_KIND if qos else QOS0_KIND
    return f"{PREFIX}.{kind}." + ".".join(encode_level(level) for level in topic.split("/"))


def filter_subjects(topic_filter: str) -> list[str]:
    """The NATS subjects (with ``*`` for the kind) covering ``topic_filter``."""
    levels = topic_filter.split("/")
    tokens = []
    for level in levels:
        if level == "+":
            tokens.append("*")
        elif level == "#":
            break
        else:
            tokens.append(encode_level(level))
    base = f"{PREFIX}.*"
    if levels[-1] != "#":
        return [".".join([base, *tokens])]
    if not tokens:  # "#" alone: every topic
        return [f"{base}.>"]
    parent = ".".join([base, *tokens])
    return [parent, parent + ".>"]


def kv_key(text: str) -> str:
    """A key-value bucket key for any string (client id, topic): KV keys allow only ``[-/_=.a-zA-Z0-9]``."""
    return "k" + base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def from_kv_key(key: str) -> str:
    body = key[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")


# ------------------------------------------------------------------------------------------------- envelope

_HEADER = struct.Struct(">I")


def encode_message(message, origin: str, seq: int, now: float) -> bytes:
    """``message`` (a ``router.Message``) as bytes: a length-prefixed JSON head, then the payload as is.
    ``now`` is the sender's ``loop.time()``; a deadline travels as an absolute wall-clock time."""
    head = {"t": message.topic, "q": message.qos, "r": message.retain, "o": origin, "s": seq}
    if message.publisher is not None:
        head["p"] = message.publisher
    if message.expires_at is not None:
        head["x"] = time.time() + (message.expires_at - now)
    if message.properties:
        head["pr"] = _encode_properties(message.properties)
    raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(raw)) + raw + message.payload


def decode_message(data: bytes, now: float):
    """(Message, origin, seq) from ``encode_message``'s bytes; ``now`` is the receiver's ``loop.time()``.
    Raises ValueError for anything malformed."""
    from ..router import Message

    if len(data) < _HEADER.size:
        raise ValueError("truncated envelope")
    (length,) = _HEADER.unpack_from(data)
    end = _HEADER.size + length
    if end > len(data):
        raise ValueError("truncated envelope head")
    try:
        head = json.loads(data[_HEADER.size:end])
        expires_at = None
        if "x" in head:
            expires_at = now + (float(head["x"]) - time.time())
        properties = _decode_properties(head["pr"]) if "pr" in head else None
        message = Message(str(head["t"]), bytes(data[end:]), int(head["q"]), bool(head["r"]), properties,
                          head.get("p"), expires_at)
        return message, str(head["o"]), int(head["s"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed envelope: {exc}") from exc


def _encode_properties(properties: dict) -> dict:
    out: dict[str, Any] = {}
    for name, value in properties.items():
        if isinstance(value, (bytes, bytearray)):
            out[name] = {"b": base64.b64encode(value).decode("ascii")}
        elif name == "user_property":
            out[name] = [list(pair) for pair in value]
        else:
            out[name] = value
    return out


def _decode_properties(encoded: dict) -> dict:
    out: dict[str, Any] = {}
    for name, value in encoded.items():
        if isinstance(value, dict) and "b" in value:
            out[name] = base64.b64decode(value["b"])
        elif name == "user_property":
            out[name] = [tuple(pair) for pair in value]
        else:
            out[name] = value
    return out
