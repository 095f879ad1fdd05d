"""Routing: the application message, a subscription, the ``Router`` interface and its local implementation.

``LocalRouter`` keeps filters in a ``TopicTrie`` and caches, per topic, the list of trie nodes that match it.
A subscriber joining or leaving an existing filter changes nothing in that cache (the node's subscriber dict
is read at delivery time); only a filter that appears or disappears invalidates the cached topics it matches.
That keeps the common case -- many messages on few topics -- at one dict lookup per PUBLISH.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .mqtt.frame import encode_publish_parts
from .mqtt.packets import Properties
from .mqtt.topic import has_wildcard, matches
from .trie import SharedGroup, TopicTrie, TrieNode

# Cached topics beyond this are dropped wholesale (a broker with endless distinct topics gains nothing).
TOPIC_CACHE_LIMIT = 50_000
# A new or vanished wildcard filter invalidates the cached topics it matches; in a cache bigger than this,
# finding them costs more than rebuilding, so the whole cache goes instead.
INVALIDATE_SCAN_LIMIT = 2_000


class Subscriber(Protocol):
    """What routing needs of a subscriber (``session.Session``, which sits above the router)."""

    @property
    def client_id(self) -> str: ...

    def deliver(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None: ...


class Message:
    """An application message as the broker routes it.

    ``properties`` are the 5.0 properties passed through to subscribers (never the topic alias, subscription
    identifiers or message expiry, which are per delivery); ``expires_at`` is a ``loop.time()`` deadline or
    None; ``stamp`` is its (origin, sequence) in a cluster once it went through NATS (see ``cluster/``), which
    lets a node taking a session over tell the copies of one message apart. ``wire`` caches encoded PUBLISH
    forms shared by every subscriber that gets the same bytes.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "publisher", "expires_at", "stamp",
                 "_wire_key", "_wire_parts", "_wire_more")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: Properties | None = None, publisher: str | None = None,
                 expires_at: float | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.publisher = publisher
        self.expires_at = expires_at
        self.stamp: tuple[str, int] | None = None  # (origin, sequence) once it went through a cluster's NATS
        # The first encoded form lives in two slots (most messages have only one); any others in a dict.
        self._wire_key: tuple[Any, ...] | None = None
        self._wire_parts: tuple[bytes, bytes] | None = None
        self._wire_more: dict[tuple[Any, ...], tuple[bytes, bytes]] | None = None

    def wire(self, version: int, qos: int, retain: bool, sub_ids: tuple[int, ...], expiry: int | None,
             alias: int = 0) -> tuple[bytes, bytes]:
        """(head, tail) of this message as a PUBLISH (see ``encode_publish_parts``), encoded once per form.
        At QoS 0 the whole packet is ``head`` and ``tail`` is empty.

        ``alias`` (5.0 outbound topic alias): positive to announce the alias with the topic, negative to send
        the alias alone instead of the topic."""
        key: tuple[Any, ...]
        if version == 5:
            key = (5, qos, retain, sub_ids, expiry, alias)
        else:
            key = (version, qos, retain)
        if self._wire_key == key and self._wire_parts is not None:
            return self._wire_parts
        more = self._wire_more
        if more is not None:
            parts = more.get(key)
            if parts is not None:
                return parts
        properties = self.properties
        topic = self.topic
        if version == 5 and (sub_ids or expiry is not None or alias):
            properties = dict(properties) if properties else {}
            if expiry is not None:
                properties["message_expiry_interval"] = expiry
            if sub_ids:
                properties["subscription_identifier"] = list(sub_ids)
            if alias:
                properties["topic_alias"] = abs(alias)
                if alias < 0:
                    topic = ""
        head, tail = encode_publish_parts(topic, self.payload, qos, retain, False, properties, version)
        if not qos:  # QoS 0 has no packet id to splice in: keep it as one buffer
            head, tail = head + tail, b""
        parts = (head, tail)
        if self._wire_key is None:
            self._wire_key = key
            self._wire_parts = parts
        else:
            if more is None:
                more = self._wire_more = {}
            more[key] = parts
        return parts


class Subscription:
    """One session's subscription to one filter (shared or not), with its 5.0 options.

    ``guard`` is None, or a per-message read check ``guard(topic) -> bool`` for a filter that overlaps a deny
    rule of the subscriber's ACL (``authz.read_guard``): routing skips this subscription for a message it refuses.
    Subscriptions that overlap nothing denied carry None and pay one attribute test."""

    __slots__ = ("topic_filter", "qos", "no_local", "retain_as_published", "retain_handling", "sub_ids",
                 "share_group", "guard")

    def __init__(self, topic_filter: str, qos: int, no_local: bool = False, retain_as_published: bool = False,
                 retain_handling: int = 0, sub_id: int | None = None, share_group: str | None = None) -> None:
        self.topic_filter = topic_filter  # without the $share prefix
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.sub_ids = (sub_id,) if sub_id else ()
        self.share_group = share_group
        self.guard: Callable[[str], bool] | None = None


class Router:
    """Where subscriptions live and messages are matched. A NATS backplane can implement the same three calls."""

    def subscribe(self, session: Subscriber, subscription: Subscription) -> None:
        raise NotImplementedError

    def unsubscribe(self, session: Subscriber, subscription: Subscription) -> None:
        raise NotImplementedError

    def publish(self, message: Message) -> int:
        """Deliver ``message`` to every matching session; returns how many sessions it went to."""
        raise NotImplementedError

    def may_deliver_sys(self) -> bool:
        """False when no ``$SYS`` message can reach anyone (a cheap check before building one, such as the
        event published at every connect and disconnect)."""
        return True


class LocalRouter(Router):
    __slots__ = ("trie", "_cache")

    def __init__(self) -> None:
        self.trie = TopicTrie()
        self._cache: dict[str, list[TrieNode]] = {}

    def subscribe(self, session: Subscriber, subscription: Subscription) -> None:
        node = self.trie.insert(subscription.topic_filter)
        was_active = node.active
        group_name = subscription.share_group
        if group_name is None:
            node.subscribers[session] = subscription
        else:
            group = node.shared.get(group_name)
            if group is None:
                group = node.shared[group_name] = SharedGroup()
            group.add(session, subscription)
        if not was_active:
            self._invalidate(node.filter)

    def unsubscribe(self, session: Subscriber, subscription: Subscription) -> None:
        node = self.trie.node(subscription.topic_filter)
        if node is None:
            return
        group_name = subscription.share_group
        if group_name is None:
            node.subscribers.pop(session, None)
        else:
            group = node.shared.get(group_name)
            if group is not None:
                group.remove(session)
                if not group.members:
                    del node.shared[group_name]
        if not node.active:
            self.trie.prune(node)
            self._invalidate(node.filter)

    def _invalidate(self, topic_filter: str) -> None:
        cache = self._cache
        if not has_wildcard(topic_filter):
            cache.pop(topic_filter, None)
            return
        if len(cache) > INVALIDATE_SCAN_LIMIT:
            cache.clear()
            return
        for topic in [t for t in cache if matches(t, topic_filter)]:
            del cache[topic]

    def may_deliver_sys(self) -> bool:
        # ``$`` topics are matched by no wildcard at the first level: only filters under "$SYS" match.
        return "$SYS" in self.trie.root.children

    def match(self, topic: str) -> list[TrieNode]:
        nodes = self._cache.get(topic)
        if nodes is None:
            nodes = self.trie.match(topic)
            if topic.startswith("$SYS/"):
                # Not cached: a client event's topic names its client, and would be in the cache once per client.
                return nodes
            if len(self._cache) >= TOPIC_CACHE_LIMIT:
                self._cache.clear()
            self._cache[topic] = nodes
        return nodes

    def publish(self, message: Message) -> int:  # noqa: C901 - the fan-out hot path, kept in one frame
        nodes = self._cache.get(message.topic)
        if nodes is None:
            nodes = self.match(message.topic)
        if not nodes:
            return 0
        publisher = message.publisher
        retain = message.retain
        if len(nodes) == 1 and not nodes[0].shared:
            # The common case: one filter matches; every subscriber gets exactly one copy.
            count = 0
            for session, sub in nodes[0].subscribers.items():
                if sub.no_local and session.client_id == publisher:
                    continue
                if sub.guard is not None and not sub.guard(message.topic):
                    continue
                session.deliver(message, sub.qos, retain and sub.retain_as_published, sub.sub_ids)
                count += 1
            return count
        # Overlapping filters: one delivery per session, at the highest QoS, with every subscription id.
        merged: dict[Subscriber, list[Any]] = {}  # session -> [qos, retain as published, subscription ids]
        shared_picks = []
        for node in nodes:
            for session, sub in node.subscribers.items():
                if sub.no_local and session.client_id == publisher:
                    continue
                if sub.guard is not None and not sub.guard(message.topic):
                    continue
                entry = merged.get(session)
                if entry is None:
                    merged[session] = [sub.qos, sub.retain_as_published, sub.sub_ids]
                else:
                    if sub.qos > entry[0]:
                        entry[0] = sub.qos
                    entry[1] = entry[1] or sub.retain_as_published
                    if sub.sub_ids:
                        entry[2] = entry[2] + sub.sub_ids
            for group in node.shared.values():
                pick = group.pick(message.topic)
                if pick is not None:
                    shared_picks.append(pick)
        for session, (qos, retain_as_published, sub_ids) in merged.items():
            session.deliver(message, qos, retain and retain_as_published, sub_ids)
        for session, sub in shared_picks:
            session.deliver(message, sub.qos, retain and sub.retain_as_published, sub.sub_ids)
        return len(merged) + len(shared_picks)
