"""Retained messages: one per topic, replaced by a newer one, cleared by an empty payload.

Indexed by topic level (a trie, as mosquitto's retain tree): ``iter_matching(filter, now)`` walks only the
branches the filter can reach, so a SUBSCRIBE costs what it matches, not what is stored. A ``+`` level visits
every child of its node, a ``#`` level the whole subtree below it; ``$`` topics are never reached through a
leading ``+`` or ``#`` (MQTT 4.7.2). A plain dict (topic -> trie node) sits beside the trie for exact lookups
and for replacing a topic's message without walking the trie.

``iter_matching`` is lazy and safe to resume after the store changed between two steps (each node's children
are copied when the walk enters it): a topic cleared meanwhile is skipped, one replaced meanwhile yields its
newer message. Expired messages (message expiry) are dropped from the store as the walk meets them and never
yielded.

Bounded (``retainer { ... }``): ``refusal(message)`` names the limit a retained publish would exceed (the
number of messages, their total topic + payload bytes, one payload's size) or returns None. Clearing a topic
(empty payload) is never refused, and replacing a topic's message counts only the difference. The store keeps
whatever ``store`` is given; the broker asks ``refusal`` first.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from .mqtt.topic import has_wildcard
from .router import Message


def _size(message: Message) -> int:
    return len(message.topic) + len(message.payload)


class _Node:
    """One topic level: the message retained on the topic that ends here (if any) and the next levels."""

    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.message: Message | None = None


class RetainedStore:
    __slots__ = ("_nodes", "_root", "_bytes", "_system", "max_messages", "max_bytes", "max_payload_size")

    def __init__(self, max_messages: int | None = None, max_bytes: int | None = None,
                 max_payload_size: int | None = None) -> None:
        self._nodes: dict[str, _Node] = {}  # topic -> its node, which holds its message
        self._root = _Node()
        self._bytes = 0
        # Retained ``$SYS/...`` topics (the broker's own, ``sys_topics``): not counted against the limits.
        self._system = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_payload_size = max_payload_size

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def counted(self) -> int:
        """Retained messages held to ``max_retained_messages``: every one but the broker's own ``$SYS`` messages."""
        return len(self._nodes) - self._system

    @property
    def bytes(self) -> int:
        """Topic and payload bytes of the stored messages (the broker's own ``$SYS`` messages not counted)."""
        return self._bytes

    def topics(self) -> Iterator[str]:
        """The retained topics, oldest first (a live view: do not change the store while iterating)."""
        return iter(self._nodes)

    def refusal(self, message: Message) -> str | None:
        """The ``retainer`` limit storing ``message`` would exceed, or None when it fits."""
        payload = len(message.payload)
        if not payload:
            return None
        if self.max_payload_size is not None and payload > self.max_payload_size:
            return "retainer.max_payload_size"
        existing = self.get(message.topic)
        if existing is None and self.max_messages is not None \
                and self.counted >= self.max_messages:
            return "retainer.max_retained_messages"
        if self.max_bytes is not None:
            grown = self._bytes + _size(message) - (_size(existing) if existing is not None else 0)
            if grown > self.max_bytes:
                return "retainer.max_retained_bytes"
        return None

    def store(self, message: Message) -> None:
        """Keep ``message`` as its topic's retained message, or clear the topic when the payload is empty."""
        if not message.payload:
            self._remove(message.topic)
            return
        node = self._nodes.get(message.topic)
        system = message.topic.startswith("$SYS/")
        if node is not None:  # a replacement: no walk
            if not system:
                self._bytes += _size(message) - _size(node.message)  # type: ignore[arg-type]
            node.message = message
            return
        node = self._root
        for level in message.topic.split("/"):
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(level)
            if child is None:
                child = children[level] = _Node()
            node = child
        node.message = message
        self._nodes[message.topic] = node
        if system:
            self._system += 1
        else:
            self._bytes += _size(message)

    def _remove(self, topic: str) -> None:
        found = self._nodes.pop(topic, None)
        if found is None:
            return
        if topic.startswith("$SYS/"):
            self._system -= 1
        else:
            self._bytes -= _size(found.message)  # type: ignore[arg-type]
        path = [(self._root, "")]
        node = self._root
        for level in topic.split("/"):
            node = node.children[level]  # type: ignore[index]
            path.append((node, level))
        node.message = None
        # Prune the levels left without a message or children, deepest first.
        for index in range(len(path) - 1, 0, -1):
            node, level = path[index]
            if node.message is not None or node.children:
                break
            parent = path[index - 1][0]
            siblings = parent.children
            assert siblings is not None  # the path came down through them
            del siblings[level]
            if not siblings:
                parent.children = None

    def get(self, topic: str) -> Message | None:
        node = self._nodes.get(topic)
        return node.message if node is not None else None

    def matching(self, topic_filter: str, now: float) -> list[Message]:
        """The retained messages a new subscription to ``topic_filter`` receives; expired ones are dropped."""
        return list(self.iter_matching(topic_filter, now))

    def iter_matching(self, topic_filter: str, now: float) -> Generator[Message, None, None]:
        """Lazily, the live retained messages matching ``topic_filter`` (see the module docstring)."""
        if not has_wildcard(topic_filter):
            found = self.get(topic_filter)
            candidates: Iterator[Message] = iter((found,) if found is not None else ())
        else:
            candidates = self._walk(self._root, topic_filter.split("/"), 0)
        for message in candidates:
            if message.expires_at is not None and message.expires_at <= now:
                self._remove(message.topic)
            else:
                yield message

    def _walk(self, node: _Node, levels: list[str], index: int) -> Iterator[Message]:
        if index == len(levels):
            if node.message is not None:
                yield node.message
            return
        level = levels[index]
        if level == "#":
            # "a/#" matches "a" itself; at the root there is no topic, and "$" topics are skipped.
            yield from self._subtree(node, skip_dollar=index == 0)
            return
        children = node.children
        if not children:
            return
        if level == "+":
            for name, child in tuple(children.items()):
                if index == 0 and name.startswith("$"):
                    continue
                yield from self._walk(child, levels, index + 1)
            return
        exact = children.get(level)
        if exact is not None:
            yield from self._walk(exact, levels, index + 1)

    @staticmethod
    def _subtree(top: _Node, skip_dollar: bool) -> Iterator[Message]:
        """``top``'s message and every message below it, depth first, each level in insertion order."""
        if top.message is not None:
            yield top.message
        if not top.children:
            return
        first = tuple(child for name, child in top.children.items() if not (skip_dollar and name.startswith("$")))
        stack = [iter(first)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            if node.message is not None:
                yield node.message
            if node.children:
                stack.append(iter(tuple(node.children.values())))
