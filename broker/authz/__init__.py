"""Topic authorization: the ACL file's rules, first match wins, ``no_match`` otherwise.

``Authorizer`` holds the rules (reloaded live when the file's digest changes or on SIGHUP) and counts denials
(``wharf_authz_denied_total{action}``). Each connected client gets a ``ClientAcl``: the rules that apply to it
(its username, client id, certificate CN and address decided once, placeholders filled in) and a small cache of
decisions, so that the check on every PUBLISH is one dict lookup after the first. A reload bumps the
authorizer's generation, which empties every client's cache and rule list at its next check.

Placeholder values that could widen a rule (``unsafe_value``) are never filled in: an allow rule then does not
apply, a deny rule applies from that level on to everything. A granted subscription whose filter overlaps a deny
rule ranked before the rule granting it (``needs_read_check``) carries ``read_guard``: each message delivered
through it is checked against the subscribe rules (``may_read``); other subscriptions are not checked at all.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..config.model import Authorization
from ..metrics import REGISTRY, Registry
from ..watched_file import WatchedFile
from .acl_file import AclSyntaxError, Rule, TopicPattern, parse_acl

log = logging.getLogger("wharf_broker.authz")

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
DELIVER = "deliver"  # a message refused to a subscriber by the per-message read check


@dataclass
class ClientFacts:
    username: str | None
    client_id: str
    cert_common_name: str | None
    address: object  # ipaddress.IPv4Address | IPv6Address | None

    @classmethod
    def of(cls, username, client_id, cert_common_name, peer) -> ClientFacts:
        address = None
        if peer:
            try:
                address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
            except ValueError:
                address = None
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
        return cls(username, client_id, cert_common_name, address)


def filter_covers(rule_filter: str, requested: str) -> bool:
    """Whether every topic ``requested`` (a topic name or filter) can match is matched by ``rule_filter``."""
    rule = rule_filter.split("/")
    wanted = requested.split("/")
    if wanted[0].startswith("$") and rule[0] in ("+", "#"):
        return False  # MQTT: wildcards at the first level never match $-topics
    for index, level in enumerate(rule):
        if level == "#":
            return True
        if index >= len(wanted):
            return False
        asked = wanted[index]
        if asked == "#":
            return False
        if level == "+":
            continue
        if asked == "+" or asked != level:
            return False
    return len(rule) == len(wanted)


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic name matches both filters (``+``/``#`` in either; MQTT's rule that wildcards at the
    first level never match ``$``-topics holds)."""
    a = first.split("/")
    b = second.split("/")
    if (a[0] in ("+", "#") and b[0].startswith("$")) or (b[0] in ("+", "#") and a[0].startswith("$")):
        return False
    for index in range(max(len(a), len(b))):
        left = a[index] if index < len(a) else None
        right = b[index] if index < len(b) else None
        if left == "#" or right == "#":
            return True  # "x/#" also matches "x": a shorter filter ending here still overlaps it
        if left is None or right is None:
            return False
        if left != right and left != "+" and right != "+":
            return False
    return True


PLACEHOLDERS = (("${username}", "username"), ("${clientid}", "client_id"),
                ("${cert_common_name}", "cert_common_name"))


_PLACEHOLDER = re.compile(r"\$\{(username|clientid|cert_common_name)\}")
_FIELDS_BY_NAME = {"username": "username", "clientid": "client_id", "cert_common_name": "cert_common_name"}


def unsafe_value(value: str | None) -> bool:
    """Whether a placeholder value could widen a topic filter or a mountpoint: missing or empty, or holding a
    wildcard (``+``, ``#``), a level separator (``/``) or NUL."""
    return not value or "+" in value or "#" in value or "/" in value or "\0" in value


def _fill(text: str, facts: ClientFacts, allow: bool) -> tuple[str | None, bool]:
    """``text`` with ``${username}`` / ``${clientid}`` / ``${cert_common_name}`` filled in.

    A value that could widen the filter (``unsafe_value``: e.g. a user named ``+`` reaching every user's topics)
    is never substituted. An allow rule then does not apply to this client (None); a deny rule applies from that
    level on to everything (``prefix/#``), so that it can only grow stricter, never looser. Returns (the filter
    or None, whether it was widened so)."""
    if not any(placeholder in text for placeholder, _field in PLACEHOLDERS):
        return text, False
    levels = text.split("/")
    for index, level in enumerate(levels):
        for placeholder, field in PLACEHOLDERS:
            if placeholder in level and unsafe_value(getattr(facts, field)):
                return (None, False) if allow else ("/".join(levels[:index] + ["#"]), True)
    # One pass: a value that itself reads "${clientid}" stays as it is.
    return _PLACEHOLDER.sub(lambda match: getattr(facts, _FIELDS_BY_NAME[match.group(1)]), text), False


class Authorizer:
    def __init__(self, config: Authorization, registry: Registry = REGISTRY) -> None:
        self.config = config
        self.allow_by_default = config.no_match == "allow"
        self.disconnect_on_deny = config.deny_action == "disconnect"
        self.path = config.file.path if config.file.enable else ""
        self.reload_interval = config.file.reload_interval
        self.rules: list[Rule] = []
        self._file = WatchedFile(self.path, "ACL file", parse_acl, self._install, AclSyntaxError,
                                 lambda: f"{len(self.rules)} rules", log, self.reload_interval)
        self.generation = 0
        denied = registry.counter("wharf_authz_denied_total",
                                  "PUBLISH and SUBSCRIBE refused by the ACL, and messages not delivered through a "
                                  "subscription because a deny rule covers their topic (deliver)", ("action",))
        self.denied = {action: denied.labels(action=action) for action in (PUBLISH, SUBSCRIBE, DELIVER)}
        # Called after each reload that changed the rules (the broker re-decides which subscriptions need a read
        # check).
        self.on_reload: list = []
        if self.path:
            self.reload()

    @property
    def needed(self) -> bool:
        """False when every check would allow: the channel then skips authorization altogether."""
        return bool(self.path) or not self.allow_by_default

    def reload(self) -> bool:
        """Re-read the ACL file if its content changed. The first load raises; later failures keep the old rules."""
        if not self.path:
            return False
        return self._file.reload()

    def _install(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.generation += 1
        log.info("ACL file %s: %d rules", self.path, len(rules))
        for callback in self.on_reload:
            callback()

    @property
    def digest(self) -> str:
        return self._file.digest

    def start(self) -> None:
        if self.path:
            self._file.start()

    async def stop(self) -> None:
        await self._file.stop()

    def for_client(self, facts: ClientFacts) -> ClientAcl:
        return ClientAcl(self, facts)


class ClientAcl:
    """One client's view of the ACL, with its decision cache."""

    __slots__ = ("authorizer", "cache", "cache_enabled", "facts", "generation", "max_size", "rules", "ttl",
                 "readable")

    def __init__(self, authorizer: Authorizer, facts: ClientFacts) -> None:
        self.authorizer = authorizer
        self.facts = facts
        cache = authorizer.config.cache
        self.cache_enabled = cache.enable
        self.max_size = cache.max_size
        self.ttl = cache.ttl
        self.cache: OrderedDict = OrderedDict()
        # The read check's own decisions (topic -> bool), looked up by ``read_guard`` without a call: a decision
        # only changes with the rules, so no TTL; emptied by a reload, oldest first out beyond ``max_size``.
        self.readable: dict[str, bool] = {}
        self.generation = -1
        self.rules: list = []

    def _compile(self) -> None:
        """The rules that concern this client, placeholders filled in."""
        facts = self.facts
        compiled = []
        for rule in self.authorizer.rules:
            if not rule.who.matches(facts):
                continue
            topics = None
            if rule.topics is not None:
                topics = []
                for pattern in rule.topics:
                    text, exact = pattern.text, pattern.exact
                    if pattern.placeholders:
                        text, widened = _fill(text, facts, rule.allow)
                        if text is None:
                            continue
                        exact = exact and not widened
                    topics.append(TopicPattern(text, exact, False))
                if not topics:
                    continue
            compiled.append((rule.allow, rule.publish, rule.subscribe, topics))
        self.rules = compiled
        self.generation = self.authorizer.generation
        self.cache.clear()
        self.readable.clear()

    def _decide(self, action: str, topic: str) -> bool:
        if self.generation != self.authorizer.generation:
            self._compile()
        key = (action, topic)
        if self.cache_enabled:
            hit = self.cache.get(key)
            if hit is not None and hit[1] > time.monotonic():
                return hit[0]
        publish = action == PUBLISH
        allowed = self.authorizer.allow_by_default
        for allow, on_publish, on_subscribe, topics in self.rules:
            if not (on_publish if publish else on_subscribe):
                continue
            if topics is None or any(
                    (pattern.text == topic) if pattern.exact else filter_covers(pattern.text, topic)
                    for pattern in topics):
                allowed = allow
                break
        if self.cache_enabled:
            self.cache[key] = (allowed, time.monotonic() + self.ttl)
            if len(self.cache) > self.max_size:
                self.cache.popitem(last=False)
        return allowed

    def decide(self, action: str, topic: str) -> bool:
        allowed = self._decide(action, topic)
        if not allowed:
            self.authorizer.denied[action].inc()
        return allowed

    def may_publish(self, topic: str) -> bool:
        return self.decide(PUBLISH, topic)

    def may_subscribe(self, topic_filter: str) -> bool:
        return self.decide(SUBSCRIBE, topic_filter)

    def may_read(self, topic: str) -> bool:
        """Whether a message on ``topic`` may be delivered to this client: the subscribe rules asked about the
        topic itself (mosquitto's per-message read check). Refusals count as ``action="deliver"``."""
        allowed = self._decide(SUBSCRIBE, topic)
        if self.cache_enabled:
            readable = self.readable
            if len(readable) >= self.max_size:
                del readable[next(iter(readable))]
            readable[topic] = allowed
        if not allowed:
            self.authorizer.denied[DELIVER].inc()
        return allowed

    def needs_read_check(self, topic_filter: str) -> bool:
        """Whether messages delivered through ``topic_filter`` need ``may_read`` one by one: True when a deny
        rule for subscribing that comes before the rule granting the filter overlaps it (``{deny, all,
        subscribe, ["secret/#"]}`` before an allow of ``+/status``: ``secret/status`` matches both), and when
        the filter is not granted at all (a session inherited from another identity). False for a filter that
        overlaps no such deny rule: every topic it matches is allowed by the same rule, so nothing is checked."""
        if self.generation != self.authorizer.generation:
            self._compile()
        for allow, _on_publish, on_subscribe, topics in self.rules:
            if not on_subscribe:
                continue
            if topics is None:
                return not allow
            if any((pattern.text == topic_filter) if pattern.exact else filter_covers(pattern.text, topic_filter)
                   for pattern in topics):
                return not allow  # the rule that decides the filter: everything it matches is decided alike
            if not allow and any(_pattern_overlaps(pattern, topic_filter) for pattern in topics):
                return True
        return not self.authorizer.allow_by_default


def _pattern_overlaps(pattern: TopicPattern, topic_filter: str) -> bool:
    """Whether a rule's topic pattern can match a topic that ``topic_filter`` matches too. ``{eq, "t"}`` matches
    only the literal text, which is a topic (and so can be delivered) only without wildcards."""
    if pattern.exact:
        text = pattern.text
        return "+" not in text and "#" not in text and filters_overlap(text, topic_filter)
    return filters_overlap(pattern.text, topic_filter)


def guard_for(acl: ClientAcl | None, mountpoint: str, mounted_filter: str):
    """The read check a subscription to ``mounted_filter`` needs for a client with ``acl`` behind ``mountpoint``,
    or None (it overlaps no deny rule: whatever it matches is allowed). A filter outside the mountpoint (a session
    inherited from another tenant) reads nothing."""
    if mountpoint and not mounted_filter.startswith(mountpoint):
        return read_guard(acl, mountpoint)
    if acl is None or not acl.needs_read_check(mounted_filter[len(mountpoint):]):
        return None
    return read_guard(acl, mountpoint)


def read_guard(acl: ClientAcl | None, mountpoint: str = ""):
    """The per-message check a subscription carries when ``needs_read_check`` said so: ``check(topic) -> bool``
    for each (mounted) topic about to be delivered through it. The mountpoint is stripped before the ACL sees
    the topic, and a topic outside the mountpoint is never readable. A closure rather than an object with
    ``__call__``: it runs once per delivery, and a known topic costs one dict lookup."""
    strip = len(mountpoint)
    if acl is None:
        def namespace_only(topic: str) -> bool:
            return topic.startswith(mountpoint)
        return namespace_only
    authorizer = acl.authorizer
    readable = acl.readable
    may_read = acl.may_read
    denied = authorizer.denied[DELIVER]

    def check(topic: str) -> bool:
        if strip:
            if not topic.startswith(mountpoint):
                denied.value += 1
                return False
            topic = topic[strip:]
        if acl.generation == authorizer.generation:
            allowed = readable.get(topic)
            if allowed is not None:
                if not allowed:
                    denied.value += 1
                return allowed
        return may_read(topic)
    return check


__all__ = ["AclSyntaxError", "Authorizer", "ClientAcl", "ClientFacts", "filter_covers", "filters_overlap",
           "guard_for", "parse_acl", "read_guard", "unsafe_value"]
