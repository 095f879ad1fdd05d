"""Retained messages: one per topic, replaced by a newer one, cleared by an empty payload."""

from __future__ import annotations

from .mqtt.topic import has_wildcard, matches
from .router import Message


class RetainedStore:
    __slots__ = ("_messages",)

    def __init__(self) -> None:
        self._messages: dict[str, Message] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def store(self, message: Message) -> None:
        """Keep ``message`` as its topic's retained message, or clear the topic when the payload is empty."""
        if message.payload:
            self._messages[message.topic] = message
        else:
            self._messages.pop(message.topic, None)

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
                self._messages.pop(message.topic, None)
            else:
                live.append(message)
        return live
