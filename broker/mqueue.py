"""A session's queue of messages waiting for delivery (client offline, or its in-flight window full).

Bounded by ``max_mqueue_len`` (None = unbounded). When full, ``drop_oldest`` (EMQX's behaviour) evicts the
head to make room; ``drop_newest`` refuses the incoming message. QoS 0 messages are queued only when
``store_qos0`` is on.
"""

from __future__ import annotations

from collections import deque


class QueuedMessage:
    __slots__ = ("message", "qos", "retain", "sub_ids", "seq")

    def __init__(self, message, qos: int, retain: bool, sub_ids: tuple, seq: int = 0) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.seq = seq  # the durable store's sequence number; 0 when not stored


class MessageQueue:
    __slots__ = ("max_len", "drop_oldest", "store_qos0", "_items")

    def __init__(self, max_len: int | None, drop_policy: str = "drop_oldest", store_qos0: bool = True) -> None:
        self.max_len = max_len
        self.drop_oldest = drop_policy == "drop_oldest"
        self.store_qos0 = store_qos0
        # Created on first use: most sessions never queue anything, and an empty deque costs ~600 bytes.
        self._items: deque[QueuedMessage] | None = None

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, item: QueuedMessage) -> QueuedMessage | None:
        """Queue ``item``; returns the message dropped to respect the limits (possibly ``item``), or None."""
        if item.qos == 0 and not self.store_qos0:
            return item
        items = self._items
        if items is None:
            items = self._items = deque()
        if self.max_len is not None and len(items) >= self.max_len:
            if not self.drop_oldest or not self.max_len:
                return item
            dropped = items.popleft()
            items.append(item)
            return dropped
        items.append(item)
        return None

    def pop(self) -> QueuedMessage | None:
        return self._items.popleft() if self._items else None

    def keep(self, wanted) -> None:
        """Keep only the queued messages for which ``wanted(item)`` is true, in order."""
        if self._items:
            self._items = deque(item for item in self._items if wanted(item))

    def items(self) -> list[QueuedMessage]:
        return list(self._items) if self._items else []

    def clear(self) -> None:
        self._items = None
