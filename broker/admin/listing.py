"""Paged, filtered lists for the admin API and the Dashboard, the EMQX way.

``page`` (from 1, default 1) and ``limit`` (rows per page, default ``DEFAULT_LIMIT``, at most ``MAX_LIMIT``)
pick one page; ``meta`` says ``page``, ``limit``, ``count`` (rows matching the filters) and ``hasnext``.
Anything else in the query is either a known filter of the list or ignored, as EMQX does. Filters are hostile
input: each value is bounded (``MAX_FILTER_LENGTH``) and a bad one is a ``QueryError`` naming the parameter.

Cost: only the page's rows are built. Without a filter the page is cut from the live collection directly;
with one, the whole collection is scanned (a cheap test per item) from a snapshot, yielding to the event loop
every ``SCAN_SLICE`` items so that a million clients never stall the broker.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..metrics import REGISTRY
from ..mqtt.topic import matches, valid_topic_filter, valid_topic_name

log = logging.getLogger("wharf_broker.admin")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_PAGE = 1_000_000_000
MAX_FILTER_LENGTH = 256
SCAN_SLICE = 5000

CONN_STATES = ("connected", "disconnected")


PARAMS = ("page", "limit", "clientid", "username", "like_clientid", "like_username", "ip_address", "proto_ver",
          "conn_state", "qos", "topic", "share_group", "match_topic")
_REFUSED = REGISTRY.counter("wharf_admin_list_queries_refused_total",
                            "List queries (admin API, Dashboard) refused for a bad page, limit or filter, by "
                            "parameter", ("param",))
_REFUSED_BY_PARAM = {param: _REFUSED.labels(param=param) for param in PARAMS}


class QueryError(ValueError):
    """A query parameter that cannot be served; the message names it. Counted and logged (without the value)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        _REFUSED_BY_PARAM[param].value += 1
        log.info("list query refused: %s", message)


@dataclass(frozen=True)
class Page:
    rows: list
    page: int
    limit: int
    count: int

    @property
    def hasnext(self) -> bool:
        return self.page * self.limit < self.count

    def meta(self) -> dict[str, Any]:
        return {"page": self.page, "limit": self.limit, "count": self.count, "hasnext": self.hasnext}


def _whole(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise QueryError(name, f"{name} must be a whole number in {low}..{high}")
    value = int(raw)
    if not low <= value <= high:
        raise QueryError(name, f"{name} must be a whole number in {low}..{high}")
    return value


def page_params(query: Mapping[str, str]) -> tuple[int, int]:
    """(page, limit) from ``query``, checked."""
    return (_whole(query, "page", 1, 1, MAX_PAGE), _whole(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT))


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_FILTER_LENGTH:
        raise QueryError(name, f"{name} is longer than {MAX_FILTER_LENGTH} characters")
    return value


def client_filter(query: Mapping[str, str]) -> Callable[[Any], bool] | None:
    """A test on a connected ``Channel`` from the EMQX client filters in ``query``, or None without any.

    ``clientid``, ``username``: exact; ``like_clientid``, ``like_username``: substring; ``ip_address``: the
    peer's address; ``proto_ver``: 3, 4 or 5; ``conn_state``: connected or disconnected (only connected
    clients are listed, so ``disconnected`` lists none).
    """
    tests: list[Callable[[Any], bool]] = []
    clientid, username = _text(query, "clientid"), _text(query, "username")
    like_clientid, like_username = _text(query, "like_clientid"), _text(query, "like_username")
    if clientid is not None:
        tests.append(lambda channel: channel.client_id == clientid)
    if username is not None:
        tests.append(lambda channel: channel.username == username)
    if like_clientid is not None:
        tests.append(lambda channel: like_clientid in channel.client_id)
    if like_username is not None:
        tests.append(lambda channel: channel.username is not None and like_username in channel.username)
    address = _text(query, "ip_address")
    if address is not None:
        try:
            wanted = str(ipaddress.ip_address(address))
        except ValueError:
            raise QueryError("ip_address", "ip_address must be an IPv4 or IPv6 address") from None
        tests.append(lambda channel: _peer_address(channel) == wanted)
    proto = _text(query, "proto_ver")
    if proto is not None:
        if proto not in ("3", "4", "5"):
            raise QueryError("proto_ver", "proto_ver must be 3, 4 or 5")
        wanted_version = int(proto)
        tests.append(lambda channel: channel.version == wanted_version)
    state = _text(query, "conn_state")
    if state is not None:
        if state not in CONN_STATES:
            raise QueryError("conn_state", f"conn_state must be one of {', '.join(CONN_STATES)}")
        if state == "disconnected":
            tests.append(lambda channel: False)
    if not tests:
        return None
    return lambda channel: all(test(channel) for test in tests)


def _peer_address(channel: Any) -> str | None:
    peer = channel.connection.peer
    if not peer:
        return None
    try:
        return str(ipaddress.ip_address(peer[0]))
    except ValueError:
        return None


async def paged(items: Collection, test: Callable[[Any], bool] | None, page: int, limit: int) -> Page:
    """One page of ``items`` (a live collection: not changed by this) that pass ``test``."""
    start = (page - 1) * limit
    if test is None:
        return Page(list(itertools.islice(items, start, start + limit)), page, limit, len(items))
    rows: list = []
    count = 0
    snapshot = list(items)
    for begin in range(0, len(snapshot), SCAN_SLICE):
        if begin:
            await asyncio.sleep(0)
        for item in snapshot[begin:begin + SCAN_SLICE]:
            if test(item):
                if start <= count < start + limit:
                    rows.append(item)
                count += 1
    return Page(rows, page, limit, count)


async def page_of_clients(channels: Mapping[str, Any], query: Mapping[str, str]) -> Page:
    """The page of connected clients (``Channel`` objects, connect order) that ``query`` asks for."""
    page, limit = page_params(query)
    return await paged(channels.values(), client_filter(query), page, limit)


def views(rows: Iterable[Any]) -> list[dict]:
    """The admin API's view of each ``Channel`` on a page."""
    return [channel.info() for channel in rows]


# -- subscriptions -----------------------------------------------------------------------------------------------


def subscription_filter(query: Mapping[str, str]) -> Callable[[str, Any], bool] | None:
    """A test on (full filter, ``Subscription``) from EMQX's subscription filters in ``query`` (``clientid``
    is applied by ``page_of_subscriptions``), or None without any.

    ``topic``: the filter as subscribed (``$share/group/...`` for a shared one); ``qos``: 0, 1 or 2;
    ``share_group``: the shared-subscription group; ``match_topic``: a topic name the filter matches.
    """
    tests: list[Callable[[str, Any], bool]] = []
    topic, group, name = _text(query, "topic"), _text(query, "share_group"), _text(query, "match_topic")
    if topic is not None:
        tests.append(lambda full_filter, sub: full_filter == topic)
    if group is not None:
        tests.append(lambda full_filter, sub: sub.share_group == group)
    if name is not None:
        if not valid_topic_name(name):
            raise QueryError("match_topic", "match_topic must be a topic name (no wildcards)")
        tests.append(lambda full_filter, sub: matches(name, sub.topic_filter))
    qos = _text(query, "qos")
    if qos is not None:
        if qos not in ("0", "1", "2"):
            raise QueryError("qos", "qos must be 0, 1 or 2")
        wanted_qos = int(qos)
        tests.append(lambda full_filter, sub: sub.qos == wanted_qos)
    if not tests:
        return None
    return lambda full_filter, sub: all(test(full_filter, sub) for test in tests)


async def page_of_subscriptions(sessions: Mapping[str, Any], query: Mapping[str, str]) -> Page:
    """The page of subscriptions (of every session, connected or kept) that ``query`` asks for, as
    (client id, full filter, ``Subscription``) rows, session by session in creation order. The sessions are
    scanned from a snapshot, yielding to the event loop every ``SCAN_SLICE`` sessions."""
    page, limit = page_params(query)
    test = subscription_filter(query)
    clientid = _text(query, "clientid")
    if clientid is not None:
        found = sessions.get(clientid)
        snapshot = [found] if found is not None else []
    else:
        snapshot = list(sessions.values())
    start = (page - 1) * limit
    rows: list = []
    count = 0
    for begin in range(0, len(snapshot), SCAN_SLICE):
        if begin:
            await asyncio.sleep(0)
        for session in snapshot[begin:begin + SCAN_SLICE]:
            subscriptions = session.subscriptions
            if test is None and (count + len(subscriptions) <= start or count >= start + limit):
                count += len(subscriptions)  # wholly outside the page: counted, not looked at
                continue
            for full_filter, subscription in list(subscriptions.items()):
                if test is None or test(full_filter, subscription):
                    if start <= count < start + limit:
                        rows.append((session.client_id, full_filter, subscription))
                    count += 1
    return Page(rows, page, limit, count)


def subscription_views(rows: Iterable[tuple[str, str, Any]]) -> list[dict]:
    """The admin API's view of each subscription on a page (EMQX's field names)."""
    return [{"clientid": client_id, "topic": full_filter, "qos": sub.qos, "nl": int(sub.no_local),
             "rap": int(sub.retain_as_published), "rh": sub.retain_handling, "share_group": sub.share_group}
            for client_id, full_filter, sub in rows]


# -- retained messages -------------------------------------------------------------------------------------------


async def page_of_retained(store: Any, query: Mapping[str, str], now: float) -> Page:
    """The page of retained messages (``Message`` objects) ``query`` asks for: all of them in the order their
    topics were first retained, or with ``topic`` (a topic filter, wildcards allowed) those it matches, in the
    index's order. A filtered walk yields to the event loop every ``SCAN_SLICE`` messages."""
    page, limit = page_params(query)
    topic_filter = _text(query, "topic")
    start = (page - 1) * limit
    if topic_filter is None:
        topics = list(itertools.islice(store.topics(), start, start + limit))
        rows = [message for message in map(store.get, topics)
                if message is not None and (message.expires_at is None or message.expires_at > now)]
        return Page(rows, page, limit, len(store))
    if not valid_topic_filter(topic_filter):
        raise QueryError("topic", "topic must be a valid topic filter")
    rows = []
    count = 0
    for message in store.iter_matching(topic_filter, now):
        if start <= count < start + limit:
            rows.append(message)
        count += 1
        if not count % SCAN_SLICE:
            await asyncio.sleep(0)
    return Page(rows, page, limit, count)


def retained_views(rows: Iterable[Any], now: float) -> list[dict]:
    """The admin API's view of each retained message on a page (no payload: ``payload_size`` only)."""
    return [{"topic": message.topic, "qos": message.qos, "from_clientid": message.publisher,
             "payload_size": len(message.payload),
             "expires_in": None if message.expires_at is None else max(0.0, round(message.expires_at - now, 3))}
            for message in rows]
