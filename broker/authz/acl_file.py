"""The ACL file: EMQX's ``acl.conf`` format (Erlang terms), parsed into ``Rule`` objects.

One rule a term, ended by a dot; ``%`` starts a comment::

    {allow, {username, "dashboard"}, subscribe, ["$SYS/#"]}.
    {allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
    {allow, all, all, ["clients/${clientid}/#"]}.
    {deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
    {allow, all}.

- permission: ``allow`` | ``deny``;
- who: ``all`` | ``{username, "u"}`` (also ``user``) | ``{clientid, "c"}`` (also ``client``) |
  ``{ipaddr, "10.0.0.0/8"}`` | ``{ipaddrs, ["a", "b/24"]}`` | ``{cert_common_name, "cn"}`` |
  ``{username|clientid|cert_common_name, {re, "regex"}}`` | ``{'and', [who, ...]}`` | ``{'or', [who, ...]}``;
- action: ``publish`` | ``subscribe`` | ``all``;
- topics: filters with ``+``/``#`` and the placeholders ``${username}`` / ``${clientid}``, or ``{eq, "t"}``
  for the literal filter (``#`` as itself, not as a wildcard). ``{Permission, Who}`` alone covers everything.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any


class AclSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Atom:
    name: str


_TOKEN = re.compile(r"""
    (?P<space>\s+|%[^\n]*)
  | (?P<punct>[{}\[\],.])
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<atom>[a-z][A-Za-z0-9_@]*|'(?:[^'\\]|\\.)*')
""", re.VERBOSE)


def _tokens(text: str, source: str):
    position, line = 0, 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise AclSyntaxError(f"{source}:{line}: unexpected {text[position:position + 20]!r}")
        kind = match.lastgroup
        value = match.group()
        if kind == "string":
            yield line, bytes(value[1:-1], "utf-8").decode("unicode_escape") if "\\" in value else value[1:-1]
        elif kind == "atom":
            yield line, Atom(value.strip("'"))
        elif kind == "punct":
            yield line, value
        line += value.count("\n")
        position = match.end()


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.tokens = list(_tokens(text, source))
        self.index = 0
        self.source = source

    def error(self, message: str) -> AclSyntaxError:
        line = self.tokens[min(self.index, len(self.tokens) - 1)][0] if self.tokens else 1
        return AclSyntaxError(f"{self.source}:{line}: {message}")

    def peek(self):
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def take(self):
        if self.index >= len(self.tokens):
            raise self.error("unexpected end of file")
        token = self.tokens[self.index][1]
        self.index += 1
        return token

    def term(self) -> Any:
        token = self.take()
        if token in ("{", "["):
            closing = "}" if token == "{" else "]"
            items: list = []
            if self.peek() == closing:
                self.take()
            else:
                while True:
                    items.append(self.term())
                    separator = self.take()
                    if separator == closing:
                        break
                    if separator != ",":
                        raise self.error(f"expected ',' or {closing!r}")
            return tuple(items) if token == "{" else items
        if token in ("}", "]", ",", "."):
            raise self.error(f"unexpected {token!r}")
        return token


# ------------------------------------------------------------------------------------------ who


class Who:
    """Whether a rule applies to a client (``ClientFacts``)."""

    def matches(self, facts) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class Everyone(Who):
    def matches(self, facts) -> bool:
        return True


@dataclass(frozen=True)
class FieldIs(Who):
    field: str  # username | client_id | cert_common_name
    value: str | None = None
    pattern: Any = None

    def matches(self, facts) -> bool:
        actual = getattr(facts, self.field)
        if actual is None:
            return False
        if self.pattern is not None:
            return self.pattern.fullmatch(actual) is not None
        return actual == self.value


@dataclass(frozen=True)
class AddressIn(Who):
    networks: tuple

    def matches(self, facts) -> bool:
        address = facts.address
        return address is not None and any(address in network for network in self.networks
                                           if network.version == address.version)


@dataclass(frozen=True)
class AllOf(Who):
    parts: tuple

    def matches(self, facts) -> bool:
        return all(part.matches(facts) for part in self.parts)


@dataclass(frozen=True)
class AnyOf(Who):
    parts: tuple

    def matches(self, facts) -> bool:
        return any(part.matches(facts) for part in self.parts)


_FIELDS = {"username": "username", "user": "username", "clientid": "client_id", "client": "client_id",
           "cert_common_name": "cert_common_name", "cn": "cert_common_name"}


def _network(text: Any, reader: _Reader):
    if not isinstance(text, str):
        raise reader.error(f"an IP address or range must be a string, not {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise reader.error(f"bad IP address or range {text!r}") from None


def _who(term: Any, reader: _Reader) -> Who:
    if term == Atom("all"):
        return Everyone()
    if not isinstance(term, tuple) or len(term) != 2 or not isinstance(term[0], Atom):
        raise reader.error(f"bad client spec {term!r}")
    kind, value = term[0].name, term[1]
    if kind in _FIELDS:
        if isinstance(value, str):
            return FieldIs(_FIELDS[kind], value)
        if isinstance(value, tuple) and len(value) == 2 and value[0] == Atom("re") and isinstance(value[1], str):
            try:
                return FieldIs(_FIELDS[kind], pattern=re.compile(value[1]))
            except re.error as error:
                raise reader.error(f"bad regular expression {value[1]!r}: {error}") from None
        raise reader.error(f"{kind} needs a string or {{re, \"...\"}}")
    if kind == "ipaddr":
        return AddressIn((_network(value, reader),))
    if kind == "ipaddrs" and isinstance(value, list):
        return AddressIn(tuple(_network(item, reader) for item in value))
    if kind in ("and", "or") and isinstance(value, list) and value:
        parts = tuple(_who(item, reader) for item in value)
        return AllOf(parts) if kind == "and" else AnyOf(parts)
    raise reader.error(f"unknown client spec {kind!r}")


# ------------------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class TopicPattern:
    text: str
    exact: bool  # {eq, ...}: compared as a string, wildcards are literal
    placeholders: bool


@dataclass(frozen=True)
class Rule:
    allow: bool
    who: Who
    publish: bool
    subscribe: bool
    topics: tuple | None  # None: every topic
    line: int


_ACTIONS = {"publish": (True, False), "subscribe": (False, True), "all": (True, True), "pubsub": (True, True)}


def _topics(term: Any, reader: _Reader) -> tuple:
    if not isinstance(term, list) or not term:
        raise reader.error("topics must be a non-empty list")
    topics = []
    for item in term:
        exact = False
        if isinstance(item, tuple) and len(item) == 2 and item[0] == Atom("eq"):
            exact, item = True, item[1]
        if not isinstance(item, str) or not item:
            raise reader.error(f"bad topic {item!r}")
        topics.append(TopicPattern(item, exact, "${" in item))
    return tuple(topics)


def parse_acl(text: str, source: str = "<acl>") -> list[Rule]:
    reader = _Reader(text, source)
    rules: list[Rule] = []
    while reader.peek() is not None:
        line = reader.tokens[reader.index][0]
        term = reader.term()
        if reader.peek() is None or reader.take() != ".":
            raise reader.error("a rule must end with '.'")
        if not isinstance(term, tuple) or len(term) not in (2, 4):
            raise reader.error("a rule is {Permission, Who} or {Permission, Who, Action, Topics}")
        permission = term[0]
        if permission not in (Atom("allow"), Atom("deny")):
            raise reader.error(f"permission must be allow or deny, not {permission!r}")
        who = _who(term[1], reader)
        if len(term) == 2:
            rules.append(Rule(permission.name == "allow", who, True, True, None, line))
            continue
        action = term[2]
        if not isinstance(action, Atom) or action.name not in _ACTIONS:
            raise reader.error(f"action must be publish, subscribe or all, not {action!r}")
        publish, subscribe = _ACTIONS[action.name]
        rules.append(Rule(permission.name == "allow", who, publish, subscribe, _topics(term[3], reader), line))
    return rules
