"""Retained messages: one per topic, replaced by a newer one, cleared by an empty payload.

Bounded (``retainer { ... }``): ``refusal(message)`` names the limit a retained publish would exceed (the
number of messages, their total topic + payload bytes, one payload's size) or returns None. Clearing a topic
(empty payload) is never refused, and replacing a topic's message counts only the difference. The store keeps
whatever ``store`` is given; the broker asks ``refusal`` first.
"""

from __future__ import annotations

from .mqtt.topic import has_wildcard, matches
from .router import Message


def _size(message: Message) -> int:
    return len(message.topic) + len(message.payload)


class RetainedStore:
    __slots__ = ("_messages", "_bytes", "max_messages", "max_bytes", "max_payload_size")

    def __init__(self, max_messages: int | None = None, max_bytes: int | None = None,
                 max_payload_size: int | None = None) -> None:
        self._messages: dict[str, Message] = {}
        self._bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_payload_size = max_payload_size

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def bytes(self) -> int:
        """Topic and payload bytes of the stored messages."""
        return self._bytes

    def refusal(self, message: Message) -> str | None:
        """The ``retainer`` limit storing ``message`` would exceed, or None when it fits."""
        payload = len(message.payload)
        if not payload:
            return None
        if self.max_payload_size is not None and payload > self.max_payload_size:
            return "retainer.max_payload_size"
        existing = self._messages.get(message.topic)
        if existing is None and self.max_messages is not None and len(self._messages) >= self.max_messages:
            return "retainer.max_retained_messages"
        if self.max_bytes is not None:
            grown = self._bytes + _size(message) - (_size(existing) if existing is not None else 0)
            if grown > self.max_bytes:
                return "retainer.max_retained_bytes"
        return None

    def store(self, message: Message) -> None:
        """Keep ``message`` as its topic's retained message, or clear the topic when the payload is empty."""
        if message.payload:
            old = self._messages.get(message.topic)
            if old is not None:
                self._bytes -= _size(old)
            self._messages[message.topic] = message
            self._bytes += _size(message)
        else:
            self._remove(message.topic)

    def _remove(self, topic: str) -> None:
        old = self._messages.pop(topic, None)
        if old is not None:
            self._bytes -= _size(old)

    def get(self, topic: str) -> Message | None:
        return self._messages.get(topic)

    def matching(self, topic_filter: str, now: float) -> list[Message]:
        """The retained messages a new subscription to ``topic_filter`` receives; expired ones are dropped."""
        if not has_wildcard(topic_filter):
            found = self._messages.get(topic_filter)
            candidates = [found] if found is not None else []
        else:
            candidates = [m for topic, m in self._messages.items() if matches(topic, topic_filter)]
        live = []
        for message in candidates:
            if message.expires_at is not None and message.expires_at <= now:
                self._remove(message.topic)
            else:
                live.append(message)
        return live
