"""Topic names and filters: validation, ``$share`` parsing and matching."""

from __future__ import annotations

SHARE_PREFIX = "$share/"


def valid_topic_name(name: str, max_levels: int = 0) -> bool:
    """A topic a PUBLISH may carry: non-empty, no wildcards, at most ``max_levels`` levels (0 = no limit)."""
    if not name or "+" in name or "#" in name:
        return False
    return not max_levels or name.count("/") < max_levels


def valid_topic_filter(topic_filter: str, max_levels: int = 0) -> bool:
    """A filter a SUBSCRIBE may carry: ``+`` and ``#`` only as whole levels, ``#`` only last."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    if max_levels and len(levels) > max_levels:
        return False
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def parse_shared(topic_filter: str) -> tuple[str, str] | None:
    """``$share/group/filter`` as (group, filter); None for a plain filter.

    Raises ``ValueError`` for a malformed shared filter (empty or wildcard group, no filter).
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, sep, real_filter = topic_filter[len(SHARE_PREFIX):].partition("/")
    if not group or not sep or not real_filter or "+" in group or "#" in group:
        raise ValueError(f"malformed shared subscription {topic_filter!r}")
    return group, real_filter


def matches(topic: str, topic_filter: str) -> bool:
    """Whether ``topic`` (a name) matches ``topic_filter``; ``$`` topics never match a root wildcard."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    return match_levels(topic.split("/"), topic_filter.split("/"))


def match_levels(topic_levels: list[str], filter_levels: list[str]) -> bool:
    count = len(topic_levels)
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= count:
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == count
