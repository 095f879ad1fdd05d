"""``$SYS`` topics in EMQX's layout, published by every node for itself under ``$SYS/brokers/<node>/``.

Every ``sys_msg_interval``: ``version`` and ``sysdescr`` (retained), ``$SYS/brokers`` (the running nodes,
comma-separated, retained), ``stats/<name>`` and ``metrics/<name>`` (EMQX's dotted names with ``/`` for ``.``,
e.g. ``stats/connections/count``, ``metrics/messages/received``; decimal integers). Every
``sys_heartbeat_interval``: ``uptime`` (milliseconds) and ``datetime`` (RFC 3339). When enabled, a JSON event
under ``clients/<clientid>/connected`` and ``.../disconnected`` for each client of this node (not retained, as in
EMQX). All are QoS 0.

Contracts:

- The messages go through the broker's router, so subscribers get them as any message: a ``$SYS/#``
  subscription is refused by the ACL like any other, ``#`` and ``+`` at the first level never match them (MQTT
  4.7.2), and a client behind a listener mountpoint sees none (its filters are mounted below the mountpoint).
- Retained ones are stored in this node's retained store only, never replicated through a cluster: a node that
  is gone leaves no retained ``$SYS`` behind, and no two nodes write the same retained topic cluster-wide.
  In a cluster the live (non-retained) publications reach subscribers on every node, each node publishing only
  its own topics, so nothing arrives twice.
- Clients can never publish under ``$SYS`` (``is_sys_topic``; the channel refuses and counts it).
- The per-connection cost is a ``None`` check in the channel unless event messages are on; then one small
  JSON publish per connect and per disconnect.
- They are not counted as messages received from clients (``wharf_messages_received_total``) nor as dropped for
  want of subscribers.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from . import __version__
from .router import Message

log = logging.getLogger("wharf_broker.sys_topics")

SYSDESCR = "Wharf MQTT broker"
# Characters that would turn a client id into extra topic levels or wildcards in an event topic.
_TOPIC_UNSAFE = {"/": "%2F", "+": "%2B", "#": "%23", "%": "%25", "\x00": "%00"}


def is_sys_topic(topic: str) -> bool:
    """Whether ``topic`` is ``$SYS`` or below it (reserved for the broker)."""
    return topic.startswith("$SYS") and (len(topic) == 4 or topic[4] == "/")


def topic_level(text: str) -> str:
    """``text`` as one safe topic level: ``/``, ``+``, ``#``, ``%`` and NUL percent-encoded."""
    if not any(char in text for char in _TOPIC_UNSAFE):
        return text
    return "".join(_TOPIC_UNSAFE.get(char, char) for char in text)


def _millis(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


class SysTopics:
    """Publishes this node's ``$SYS`` topics; ``start``/``stop`` run its timers."""

    def __init__(self, broker, settings, node: str) -> None:
        self.broker = broker
        self.settings = settings
        self.node = node
        self.prefix = f"$SYS/brokers/{topic_level(node)}/"
        self._started = time.monotonic()
        self._maxima: dict[str, int] = {}
        self._tick_handle = None
        self._heartbeat_handle = None
        events = settings.sys_event_messages
        self.on_connected = events.client_connected
        self.on_disconnected = events.client_disconnected

    # ---------------------------------------------------------------------------------------- life cycle

    def start(self) -> None:
        settings = self.settings
        if settings.sys_msg_interval > 0:
            self.tick()
        if settings.sys_heartbeat_interval > 0:
            self.heartbeat()
        if self.on_connected or self.on_disconnected:
            self.broker.sys_events = self

    def stop(self) -> None:
        for handle in (self._tick_handle, self._heartbeat_handle):
            if handle is not None:
                handle.cancel()
        self._tick_handle = self._heartbeat_handle = None
        if getattr(self.broker, "sys_events", None) is self:
            self.broker.sys_events = None

    def tick(self) -> None:
        """version, sysdescr, the node list, stats and metrics; then again after ``sys_msg_interval``."""
        self._tick_handle = self.broker.loop.call_later(self.settings.sys_msg_interval, self.tick)
        try:
            self._publish("version", __version__, retain=True)
            self._publish("sysdescr", SYSDESCR, retain=True)
            self._publish_message("$SYS/brokers", ",".join(self.nodes()), retain=True)
            for name, value in self.stats().items():
                self._publish("stats/" + name.replace(".", "/"), str(value))
            for name, value in self.metrics().items():
                self._publish("metrics/" + name.replace(".", "/"), str(value))
        except Exception:  # noqa: BLE001 - the timer must survive a failing publication
            log.exception("publishing $SYS topics failed")

    def heartbeat(self) -> None:
        """uptime (ms) and datetime; then again after ``sys_heartbeat_interval``."""
        self._heartbeat_handle = self.broker.loop.call_later(self.settings.sys_heartbeat_interval, self.heartbeat)
        try:
            self._publish("uptime", str(self.uptime_ms()))
            self._publish("datetime", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        except Exception:  # noqa: BLE001
            log.exception("publishing $SYS heartbeat failed")

    # ---------------------------------------------------------------------------------------- values

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def nodes(self) -> list[str]:
        status = getattr(self.broker, "cluster_status", None)
        members = status().get("members") if status is not None else None
        return sorted(set(members or ()) | {self.node})

    def stats(self) -> dict[str, int]:
        """EMQX's stats: current counts and the highest count seen at a tick (``.max``)."""
        broker = self.broker
        router = getattr(broker.router, "local", broker.router)
        trie = getattr(router, "trie", None)
        sessions = broker.sessions
        subscriptions = sum(len(session.subscriptions) for session in sessions.values())
        current = {
            "connections.count": len(broker.connections),
            "live_connections.count": len(broker.channels),
            "sessions.count": len(sessions),
            "topics.count": len(trie) if trie is not None else 0,
            "subscriptions.count": subscriptions,
            "suboptions.count": subscriptions,
            "subscribers.count": sum(1 for session in sessions.values() if session.subscriptions),
            "retained.count": len(broker.retained),
        }
        out: dict[str, int] = {}
        maxima = self._maxima
        for name, value in current.items():
            top = name[:-len(".count")] + ".max"
            maxima[top] = max(maxima.get(top, 0), value)
            out[name] = value
            out[top] = maxima[top]
        return out

    def metrics(self) -> dict[str, int]:
        """EMQX's metric names for the counters this broker keeps."""
        metrics = self.broker.metrics
        dropped = {labels["reason"]: int(value) for labels, value in metrics.dropped_family.samples()}
        out = {
            "messages.received": int(metrics.received.value),
            "messages.sent": int(metrics.sent.value),
            "messages.dropped": sum(dropped.values()),
            "bytes.received": int(metrics.bytes_received.value),
            "bytes.sent": int(metrics.bytes_sent.value),
        }
        for reason, value in sorted(dropped.items()):
            out[f"messages.dropped.{reason}"] = value
        return out

    # ---------------------------------------------------------------------------------------- events

    def client_connected(self, channel, clean_start: bool) -> None:
        if not self.on_connected or not self.broker.router.may_deliver_sys():
            return
        payload = self._client_info(channel)
        payload.update(keepalive=channel.keepalive, clean_start=clean_start,
                       expiry_interval=_millis(channel.session_expiry))
        self._event(channel, "connected", payload)

    def client_disconnected(self, channel, reason: str) -> None:
        if not self.on_disconnected or not self.broker.router.may_deliver_sys():
            return
        payload = self._client_info(channel)
        payload.update(reason=reason, disconnected_at=payload["ts"])
        self._event(channel, "disconnected", payload)

    def _client_info(self, channel) -> dict:
        connection = channel.connection
        peer = connection.peer
        sockname = connection.transport.get_extra_info("sockname") if connection.transport is not None else None
        return {
            "clientid": channel.client_id,
            "username": channel.username,
            "ipaddress": peer[0] if peer else None,
            "sockport": sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None,
            "protocol": "mqtt",
            "proto_name": "MQIsdp" if channel.version == 3 else "MQTT",
            "proto_ver": channel.version,
            "connected_at": _millis(channel.connected_at),
            "ts": int(time.time() * 1000),
        }

    def _event(self, channel, event: str, payload: dict) -> None:
        try:
            self._publish(f"clients/{topic_level(channel.client_id or '')}/{event}",
                          json.dumps(payload, separators=(",", ":")))
        except Exception:  # noqa: BLE001 - an event must never break a connect or disconnect
            log.exception("publishing the $SYS %s event of %r failed", event, channel.client_id)

    # ---------------------------------------------------------------------------------------- publishing

    def _publish(self, name: str, payload: str, retain: bool = False) -> None:
        self._publish_message(self.prefix + name, payload, retain)

    def _publish_message(self, topic: str, payload: str, retain: bool) -> None:
        broker = self.broker
        message = Message(topic, payload.encode(), 0, retain, None, None, None)
        if retain:
            broker.retained.store(message)
            broker.metrics.retained.set(broker.retained.counted)
        broker.router.publish(message)


__all__ = ["SysTopics", "is_sys_topic", "topic_level", "SYSDESCR"]
