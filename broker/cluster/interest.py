"""The cluster's subscription interest: which filters each node subscribes to, kept in the JetStream
key-value bucket ``wharf_interest`` (one entry per node, refreshed within the bucket's TTL so a dead node's
interest disappears by itself).

A node forwards a message to NATS only when some other node has a matching plain filter, or some node
(itself included) has a matching shared subscription (shared groups are balanced by NATS queue groups).
The bucket's keys are also the cluster membership.
"""

from __future__ import annotations

import json
import logging

from ..mqtt.topic import matches
from .subjects import from_kv_key

log = logging.getLogger("wharf_broker.cluster")

CACHE_LIMIT = 50_000


class InterestView:
    def __init__(self, own_node: str) -> None:
        self.own_node = own_node
        self.nodes: dict[str, dict] = {}  # node -> {"filters": set, "shared": set of (group, filter)}
        self._remote_filters: set[str] = set()
        self._shared_filters: set[str] = set()
        self._cache: dict[str, tuple[bool, bool]] = {}
        self.version = 0  # bumped on every change

    def apply(self, key: str, value: bytes | None) -> None:
        """A bucket entry changed: ``value`` None when it was deleted or expired."""
        try:
            node = from_kv_key(key)
        except ValueError:
            return
        if value is None:
            self.nodes.pop(node, None)
        else:
            try:
                entry = json.loads(value)
                self.nodes[node] = {"filters": set(entry.get("f", ())),
                                    "shared": {tuple(pair) for pair in entry.get("g", ())}}
            except (ValueError, TypeError) as exc:
                log.warning("cluster: unreadable interest entry of node %r: %s", node, exc)
                return
        remote: set[str] = set()
        shared: set[str] = set()
        for name, entry in self.nodes.items():
            if name != self.own_node:
                remote |= entry["filters"]
            shared |= {topic_filter for _group, topic_filter in entry["shared"]}
        self._remote_filters = remote
        self._shared_filters = shared
        self._cache.clear()
        self.version += 1

    def forward(self, topic: str) -> tuple[bool, bool]:
        """(another node has a matching plain filter, some node has a matching shared subscription)."""
        found = self._cache.get(topic)
        if found is None:
            found = (any(matches(topic, f) for f in self._remote_filters),
                     any(matches(topic, f) for f in self._shared_filters))
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[topic] = found
        return found

    def members(self) -> list[str]:
        return sorted(self.nodes)


def encode_interest(filters, shared) -> bytes:
    return json.dumps({"f": sorted(filters), "g": sorted([list(pair) for pair in shared])},
                      separators=(",", ":")).encode()
