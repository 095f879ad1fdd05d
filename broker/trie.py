"""A topic trie: topic filters stored level by level, matched against topic names.

Each node stands for one filter (the path from the root) and holds that filter's subscribers: plain ones in
``subscribers`` (session -> subscription) and shared ones in ``shared`` (group name -> ``SharedGroup``). A node
with neither is only a path to deeper filters, and is pruned when it has no children either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .router import Subscription

# A subscriber: a ``Session``, used here only as a hashable key with a ``channel`` (None while disconnected). Not
# imported: the trie sits below both the router and the sessions, which do not import each other.
Subscriber = Any


class SharedGroup:
    """The members of one ``$share/group/filter``: each message goes to one of them, round-robin.

    A member whose subscription carries a read check (``Subscription.guard``) that refuses the message's topic
    is passed over for that message."""

    __slots__ = ("members", "_order", "_next")

    def __init__(self) -> None:
        self.members: dict[Subscriber, Subscription] = {}
        self._order: list[Subscriber] = []  # in join order, for the round-robin
        self._next = 0

    def add(self, session: Subscriber, subscription: Subscription) -> None:
        if session not in self.members:
            self._order.append(session)
        self.members[session] = subscription

    def remove(self, session: Subscriber) -> None:
        if self.members.pop(session, None) is not None:
            self._order.remove(session)

    def pick(self, topic: str | None = None) -> tuple[Subscriber, Subscription] | None:
        """The next member as (session, subscription) that may read ``topic``, preferring connected ones; None
        when there is none."""
        order = self._order
        count = len(order)
        if not count:
            return None
        members = self.members
        start = self._next % count
        fallback = -1
        for offset in range(count):
            session = order[(start + offset) % count]
            guard = members[session].guard
            if guard is not None and topic is not None and not guard(topic):
                continue
            if session.channel is not None:
                self._next = start + offset + 1
                return session, members[session]
            if fallback < 0:
                fallback = start + offset
        if fallback < 0:
            return None
        # Nobody (allowed) is connected: queue it in the next such member's session.
        self._next = fallback + 1
        session = order[fallback % count]
        return session, members[session]


class TrieNode:
    __slots__ = ("filter", "parent", "level", "children", "subscribers", "shared")

    def __init__(self, topic_filter: str, parent: "TrieNode | None", level: str) -> None:
        self.filter = topic_filter
        self.parent = parent
        self.level = level
        self.children: dict[str, TrieNode] = {}
        self.subscribers: dict[Subscriber, Subscription] = {}
        self.shared: dict[str, SharedGroup] = {}

    @property
    def active(self) -> bool:
        return bool(self.subscribers or self.shared)


class TopicTrie:
    __slots__ = ("root", "_nodes")

    def __init__(self) -> None:
        self.root = TrieNode("", None, "")
        self._nodes: dict[str, TrieNode] = {}  # filter -> node, for O(1) lookups on (un)subscribe

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, topic_filter: str) -> TrieNode | None:
        return self._nodes.get(topic_filter)

    def insert(self, topic_filter: str) -> TrieNode:
        node = self._nodes.get(topic_filter)
        if node is not None:
            return node
        node = self.root
        path = []
        for level in topic_filter.split("/"):
            path.append(level)
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = TrieNode("/".join(path), node, level)
            node = child
        self._nodes[topic_filter] = node
        return node

    def prune(self, node: TrieNode) -> None:
        """Drop ``node`` and any ancestors left without subscribers or children."""
        if node.active:
            return
        self._nodes.pop(node.filter, None)
        while node.parent is not None and not node.active and not node.children:
            parent = node.parent
            if parent.children.get(node.level) is node:
                del parent.children[node.level]
            node = parent

    def match(self, topic: str) -> list[TrieNode]:
        """The nodes with subscribers whose filters match ``topic``.

        ``$`` topics are not matched by ``+`` or ``#`` at the first level.
        """
        result: list[TrieNode] = []
        nodes = [self.root]
        skip_wildcards = topic.startswith("$")
        for level in topic.split("/"):
            following: list[TrieNode] = []
            for node in nodes:
                children = node.children
                if not children:
                    continue
                if not skip_wildcards:
                    multi = children.get("#")
                    if multi is not None and multi.active:
                        result.append(multi)
                    single = children.get("+")
                    if single is not None:
                        following.append(single)
                exact = children.get(level)
                if exact is not None:
                    following.append(exact)
            skip_wildcards = False
            nodes = following
            if not nodes:
                return result
        for node in nodes:
            if node.active:
                result.append(node)
            # "a/#" also matches "a" itself.
            multi = node.children.get("#")
            if multi is not None and multi.active:
                result.append(multi)
        return result
