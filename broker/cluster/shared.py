"""Shared subscriptions across the cluster: ``$share/group/filter`` balanced over every member on every node,
each message to one member.

Every node with members of a group subscribes to the filter's subjects in the NATS queue group named after
(group, filter); NATS hands each message to one queue subscriber, i.e. one node, which picks one of its local
members round-robin. Publishing nodes send a message to NATS whenever some node has a matching shared
subscription -- their own included, so the local members take their turn through NATS too.
"""

from __future__ import annotations

import hashlib

from ..mqtt.topic import matches
from ..trie import SharedGroup


def queue_name(group: str, topic_filter: str) -> str:
    """A NATS queue group name for (group, filter): a digest, since both may hold any character."""
    return "wharf-share-" + hashlib.sha256(f"{group}\0{topic_filter}".encode()).hexdigest()[:32]


class LocalSharedGroups:
    """This node's members of each (group, filter)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], SharedGroup] = {}

    def add(self, session, subscription) -> bool:
        """Adds a member; True when the (group, filter) is new on this node."""
        key = (subscription.share_group, subscription.topic_filter)
        group = self.groups.get(key)
        new = group is None
        if group is None:
            group = self.groups[key] = SharedGroup()
        group.add(session, subscription)
        return new

    def remove(self, session, subscription) -> bool:
        """Removes a member; True when the (group, filter) has no member left on this node."""
        key = (subscription.share_group, subscription.topic_filter)
        group = self.groups.get(key)
        if group is None:
            return False
        group.remove(session)
        if group.members:
            return False
        del self.groups[key]
        return True

    def deliver(self, key: tuple[str, str], message) -> int:
        """One message NATS gave this node for (group, filter): to one local member."""
        group = self.groups.get(key)
        if group is None:
            return 0
        return _deliver_pick(group, message)

    def deliver_locally(self, message) -> int:
        """Without the backplane: each matching group of this node takes the message itself."""
        count = 0
        for (_group, topic_filter), group in self.groups.items():
            if matches(message.topic, topic_filter):
                count += _deliver_pick(group, message)
        return count


def _deliver_pick(group: SharedGroup, message) -> int:
    pick = group.pick(message.topic)
    if pick is None:
        return 0
    session, sub = pick
    session.deliver(message, sub.qos, message.retain and sub.retain_as_published, sub.sub_ids)
    return 1
