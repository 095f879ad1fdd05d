"""Topic authorization: the ACL file's rules, first match wins, ``no_match`` otherwise.

``Authorizer`` holds the rules (reloaded live when the file's digest changes or on SIGHUP) and counts denials
(``wharf_authz_denied_total{action}``). Each connected client gets a ``ClientAcl``: the rules that apply to it
(its username, client id, certificate CN and address decided once, placeholders filled in) and a small cache of
decisions, so that the check on every PUBLISH is one dict lookup after the first. A reload bumps the
authorizer's generation, which empties every client's cache and rule list at its next check.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..config.model import Authorization
from ..metrics import REGISTRY, Registry
from .acl_file import AclSyntaxError, Rule, TopicPattern, parse_acl

log = logging.getLogger("wharf_broker.authz")

PUBLISH = "publish"
SUBSCRIBE = "subscribe"


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


def _fill(text: str, facts: ClientFacts) -> str | None:
    """``text`` with ``${username}`` / ``${clientid}`` filled in, or None when the rule cannot apply: no
    username, or a value holding ``+``, ``#`` or ``/`` (it would widen the filter beyond the client's own
    level, e.g. a user named ``+`` reaching every user's topics)."""
    for placeholder, value in (("${username}", facts.username), ("${clientid}", facts.client_id)):
        if placeholder in text:
            if not value or "+" in value or "#" in value or "/" in value:
                return None
            text = text.replace(placeholder, value)
    return text


class Authorizer:
    def __init__(self, config: Authorization, registry: Registry = REGISTRY) -> None:
        self.config = config
        self.allow_by_default = config.no_match == "allow"
        self.disconnect_on_deny = config.deny_action == "disconnect"
        self.path = config.file.path if config.file.enable else ""
        self.reload_interval = config.file.reload_interval
        self.rules: list[Rule] = []
        self.digest = ""
        self.generation = 0
        denied = registry.counter("wharf_authz_denied_total", "PUBLISH and SUBSCRIBE refused by the ACL",
                                  ("action",))
        self.denied = {PUBLISH: denied.labels(action=PUBLISH), SUBSCRIBE: denied.labels(action=SUBSCRIBE)}
        self._watcher: asyncio.Task | None = None
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
        first = not self.digest
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest == self.digest:
                return False
            rules = parse_acl(data.decode("utf-8"), self.path)
        except (OSError, UnicodeDecodeError, AclSyntaxError) as error:
            if first:
                raise AclSyntaxError(f"ACL file {self.path}: {error}") from None
            log.error("ACL file %s not reloaded, keeping %d rules: %s", self.path, len(self.rules), error)
            return False
        self.rules, self.digest = rules, digest
        self.generation += 1
        log.info("ACL file %s: %d rules", self.path, len(rules))
        return True

    def start(self) -> None:
        if self.path and self._watcher is None and self.reload_interval > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            self.reload()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def for_client(self, facts: ClientFacts) -> ClientAcl:
        return ClientAcl(self, facts)


class ClientAcl:
    """One client's view of the ACL, with its decision cache."""

    __slots__ = ("authorizer", "cache", "cache_enabled", "facts", "generation", "max_size", "rules", "ttl")

    def __init__(self, authorizer: Authorizer, facts: ClientFacts) -> None:
        self.authorizer = authorizer
        self.facts = facts
        cache = authorizer.config.cache
        self.cache_enabled = cache.enable
        self.max_size = cache.max_size
        self.ttl = cache.ttl
        self.cache: OrderedDict = OrderedDict()
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
                    text = pattern.text
                    if pattern.placeholders:
                        text = _fill(text, facts)
                        if text is None:
                            continue
                    topics.append(TopicPattern(text, pattern.exact, False))
                if not topics:
                    continue
            compiled.append((rule.allow, rule.publish, rule.subscribe, topics))
        self.rules = compiled
        self.generation = self.authorizer.generation
        self.cache.clear()

    def decide(self, action: str, topic: str) -> bool:
        if self.generation != self.authorizer.generation:
            self._compile()
        key = (action, topic)
        if self.cache_enabled:
            hit = self.cache.get(key)
            if hit is not None and hit[1] > time.monotonic():
                if not hit[0]:
                    self.authorizer.denied[action].inc()
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
        if not allowed:
            self.authorizer.denied[action].inc()
        return allowed

    def may_publish(self, topic: str) -> bool:
        return self.decide(PUBLISH, topic)

    def may_subscribe(self, topic_filter: str) -> bool:
        return self.decide(SUBSCRIBE, topic_filter)


__all__ = ["AclSyntaxError", "Authorizer", "ClientAcl", "ClientFacts", "filter_covers", "parse_acl"]
