"""Rows <-> broker objects: messages, subscriptions, generic session attributes.

Everything is stored as plain columns and JSON (never pickle: the store file is data, not code). Deadlines
are stored as wall-clock times and converted to and from the event loop's clock with ``offset``
(loop time - wall time) when the store opens.
"""

from __future__ import annotations

import json

from ..router import Message, Subscription

# Session slots that are runtime state or stored in their own columns and tables; every other public slot
# holding a plain value or a tuple of them (for example the owner identity) is kept in the session's ``attrs``.
_RUNTIME_SLOTS = frozenset({"client_id", "subscriptions", "inflight", "mqueue", "awaiting_rel", "channel",
                            "expiry_interval", "expiry_handle", "upgrade_qos", "store"})
_PLAIN = (str, int, float, bool, type(None))


def properties_out(properties: dict | None) -> str | None:
    if not properties:
        return None
    return json.dumps({name: ({"hex": value.hex()} if isinstance(value, (bytes, bytearray)) else value)
                       for name, value in properties.items()}, separators=(",", ":"))


def properties_in(text: str | None) -> dict | None:
    if not text:
        return None
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("properties are not an object")
    out = {}
    for name, value in raw.items():
        if isinstance(value, dict):
            value = bytes.fromhex(value["hex"])
        elif name == "user_property":
            value = [(str(key), str(val)) for key, val in value]
        out[name] = value
    return out


def message_columns(message: Message, offset: float) -> tuple:
    """(topic, payload, qos, props, publisher, expires wall time or None)."""
    expires = message.expires_at
    return (message.topic, bytes(message.payload), message.qos, properties_out(message.properties),
            message.publisher, None if expires is None else expires - offset)


def message_from(topic, payload, qos, retain, props, publisher, expires, offset: float) -> Message:
    if not isinstance(topic, str) or not topic or not isinstance(payload, bytes) or qos not in (0, 1, 2):
        raise ValueError("bad message columns")
    return Message(topic, payload, qos, bool(retain), properties_in(props), publisher,
                   None if expires is None else float(expires) + offset)


def subscriptions_out(subscriptions: dict) -> str:
    return json.dumps([[full, s.topic_filter, s.qos, s.no_local, s.retain_as_published, s.retain_handling,
                        s.sub_ids[0] if s.sub_ids else None, s.share_group]
                       for full, s in subscriptions.items()], separators=(",", ":"))


def subscriptions_in(text: str | None) -> list:
    out = []
    for full, topic_filter, qos, no_local, rap, handling, sub_id, group in json.loads(text or "[]"):
        if not isinstance(full, str) or not isinstance(topic_filter, str) or qos not in (0, 1, 2):
            raise ValueError("bad subscription")
        out.append((full, Subscription(topic_filter, qos, bool(no_local), bool(rap), int(handling), sub_id, group)))
    return out


def attrs_out(session) -> str:
    attrs = {}
    for name in type(session).__slots__:
        if name.startswith("_") or name in _RUNTIME_SLOTS:
            continue
        value = getattr(session, name, None)
        if isinstance(value, _PLAIN) or _plain_tuple(value):
            attrs[name] = value
    return json.dumps(attrs, separators=(",", ":"))


def attrs_apply(session, attrs: dict) -> None:
    for name, value in attrs.items():
        if name in type(session).__slots__ and not name.startswith("_") and name not in _RUNTIME_SLOTS \
                and (isinstance(value, _PLAIN) or (isinstance(value, list) and _plain_tuple(tuple(value)))):
            setattr(session, name, tuple(value) if isinstance(value, list) else value)


def _plain_tuple(value) -> bool:
    """A tuple of plain values (a session owner: kind, name, mountpoint), kept as a JSON list."""
    return isinstance(value, tuple) and all(isinstance(item, _PLAIN) for item in value)


def sub_ids_out(sub_ids: tuple) -> str | None:
    return json.dumps(list(sub_ids)) if sub_ids else None


def sub_ids_in(text: str | None) -> tuple:
    if not text:
        return ()
    return tuple(int(value) for value in json.loads(text))
