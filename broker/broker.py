"""The broker application core: config, router, retained store, sessions, wills, authentication, metrics.

Listeners create servers with ``protocol_factory(listener)``; every accepted socket becomes a ``Connection``
whose ``Channel`` talks to this object. ``clients()`` lists the connected clients for the admin API and
``shutdown()`` disconnects everyone (5.0 clients hear "server shutting down" first).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Callable

from .access import AccessControl
from .auth import AuthChain, Authenticator
from .channel import Channel
from .config.model import BrokerConfig
from .connection import Connection
from .limits import exceeded
from .listener_context import ListenerContext
from .metrics import REGISTRY, Registry
from .mqtt import reason_codes as rc
from .retain import RetainedStore
from .router import LocalRouter, Message, Router, Subscription
from .session import Session
from .will import WillScheduler

log = logging.getLogger("wharf_broker.broker")

RETAINED_SLICE = 256  # retained messages delivered per loop iteration to one new subscription
RETAINED_WAIT = 0.01  # seconds between looks at a client that is not keeping up with its retained messages
RETAINED_MAX_WAIT = 1.0

_WILL_PASSED_THROUGH = ("payload_format_indicator", "content_type", "response_topic", "correlation_data",
                        "user_property")


class BrokerMetrics:
    """The broker's counters, with labelled children resolved once."""

    def __init__(self, registry: Registry) -> None:
        self.received = registry.counter("wharf_messages_received_total",
                                         "PUBLISH messages received from clients (and wills published)")
        self.sent = registry.counter("wharf_messages_sent_total", "PUBLISH messages written to clients")
        self.dropped_family = registry.counter("wharf_messages_dropped_total",
                                               "Messages not delivered, by reason", ("reason",))
        self.connections = registry.gauge("wharf_connections", "Open client connections (any state)")
        self.connected = registry.gauge("wharf_clients_connected", "Clients past CONNACK")
        self.sessions = registry.gauge("wharf_sessions", "Sessions, connected or kept for offline clients")
        self.retained = registry.gauge("wharf_retained_messages", "Retained messages stored")
        self._dropped: dict = {}

    def dropped(self, reason: str):
        child = self._dropped.get(reason)
        if child is None:
            child = self._dropped[reason] = self.dropped_family.labels(reason=reason)
        return child


class Broker:
    def __init__(self, config: BrokerConfig | None = None, *, router: Router | None = None,
                 auth_hooks: list[Authenticator] | None = None, registry: Registry = REGISTRY) -> None:
        self.config = config or BrokerConfig()
        self.router = router or LocalRouter()
        retainer = self.config.retainer
        self.retained = RetainedStore(retainer.max_retained_messages, retainer.max_retained_bytes,
                                      retainer.max_payload_size)
        self.sessions: dict[str, Session] = {}
        self.channels: dict[str, Channel] = {}  # connected clients by client id
        self.connections: set[Connection] = set()
        self.wills = WillScheduler(self.publish)
        self.auth = AuthChain(self.config.authentication.allow_anonymous, auth_hooks)
        # Password file / HTTP authenticators, the ACL and flapping detection, as configured.
        self.access = AccessControl(self.config, registry)
        self.auth.hooks.extend(self.access.authenticators)
        self.auth.throttle = self.access.login_throttle
        self.metrics = BrokerMetrics(registry)
        # Listener id -> listener object; the application wiring fills this for the admin API.
        self.listeners: dict = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._housekeeping_handle: asyncio.TimerHandle | None = None
        self._received = self.metrics.received.labels()  # the child: a plain attribute add per message

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def protocol_factory(self, listener: ListenerContext) -> Callable[[], Connection]:
        """A zero-argument factory for ``loop.create_server`` that serves ``listener``."""
        return functools.partial(Connection, self, listener)

    # ------------------------------------------------------------------------------------- messages

    def publish(self, message: Message) -> int:
        """Route ``message`` (storing it first if retained); returns how many sessions it went to."""
        self._received.value += 1
        if message.retain and self.config.mqtt.retain_available:
            if self.retain_refusal(message) is None:
                self.retained.store(message)
                self.metrics.retained.set(len(self.retained))
        delivered = self.router.publish(message)
        if not delivered:
            self.metrics.dropped("no_subscribers").value += 1
        return delivered

    def retain_refusal(self, message: Message) -> str | None:
        """The ``retainer`` limit that keeps ``message`` from being stored (counted and logged), or None."""
        refused = self.retained.refusal(message)
        if refused is not None:
            exceeded(refused)
            log.info("retained message on %r from %r not stored: %s reached", message.topic, message.publisher,
                        refused)
        return refused

    def count_dropped(self, message: Message, reason: str) -> None:
        self.metrics.dropped(reason).value += 1

    def subscribe(self, session: Session, full_filter: str, subscription: Subscription) -> None:
        session.subscriptions[full_filter] = subscription
        self.router.subscribe(session, subscription)

    def unsubscribe(self, session: Session, full_filter: str) -> bool:
        subscription = session.subscriptions.pop(full_filter, None)
        if subscription is None:
            return False
        self.router.unsubscribe(session, subscription)
        return True

    def deliver_retained(self, session: Session, subscription: Subscription) -> None:
        """The retained messages a new subscription receives (RETAIN flag set).

        The first ``RETAINED_SLICE`` go out at once; a larger match continues one slice per loop iteration, in
        the same order and at the same QoS, so other clients keep being served. While the client is not keeping
        up (its socket's buffer is full, or QoS 1/2 messages wait in its queue for the in-flight window) the
        delivery waits (``RETAINED_WAIT`` seconds, doubling up to ``RETAINED_MAX_WAIT`` while nothing moves, so a
        client that never reads costs one look a second per subscription) instead of dropping what the queue
        cannot hold. It stops when the client disconnects (or is taken over) or drops the subscription.
        Meanwhile a topic's newer message may arrive live before its retained copy; the store hands out the
        newest message, never an older one.
        """
        if not self.retained:
            return
        matches = self.retained.iter_matching(subscription.topic_filter, self.loop.time())
        self._deliver_retained_slice(session, session.channel, subscription, matches)

    def _deliver_retained_slice(self, session: Session, channel: Channel | None, subscription: Subscription,
                                matches, wait: float = RETAINED_WAIT) -> None:
        if (channel is None or session.channel is not channel
                or session.subscriptions.get(subscription.topic_filter) is not subscription):
            matches.close()
            return
        connection = channel.connection
        if connection.writing_paused or session.mqueue:
            self.loop.call_later(wait, self._deliver_retained_slice, session, channel, subscription, matches,
                                 min(wait * 2, RETAINED_MAX_WAIT))
            return
        client_id = session.client_id if subscription.no_local else None
        qos, sub_ids = subscription.qos, subscription.sub_ids
        for _ in range(RETAINED_SLICE):
            message = next(matches, None)
            if message is None:
                return  # the match is exhausted
            if client_id is not None and message.publisher == client_id:
                continue
            session.deliver(message, qos, True, sub_ids)
            if session.mqueue:
                break  # the in-flight window is full: wait for it to drain
        self.loop.call_soon(self._deliver_retained_slice, session, channel, subscription, matches)

    # ------------------------------------------------------------------------------------- sessions

    def attach(self, channel: Channel, client_id: str, clean_start: bool) -> tuple[Session, bool]:
        """Give ``channel`` its session: take over a connected one, resume a kept one or start afresh.
        Returns (session, session present)."""
        old = self.channels.get(client_id)
        if old is not None and old is not channel:
            log.info("client %r: session taken over by a new connection from %s (old one from %s)", client_id,
                     channel.connection.peer_text, old.connection.peer_text)
            old.kick(rc.SESSION_TAKEN_OVER, "session taken over")
        self.wills.cancel(client_id)
        session = self.sessions.get(client_id)
        if session is not None and clean_start:
            self.discard_session(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, self.config.mqtt, self.count_dropped, self.loop.time)
            self.sessions[client_id] = session
            self.metrics.sessions.set(len(self.sessions))
        elif session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        session.channel = channel
        self.channels[client_id] = channel
        self.metrics.connected.set(len(self.channels))
        if self._housekeeping_handle is None:
            self._schedule_housekeeping()
        return session, present

    def _schedule_housekeeping(self) -> None:
        # One sweep for all clients instead of a timer per connection (a timer costs ~500 bytes each).
        settings = self.config.mqtt
        interval = max(0.05, min(settings.retry_interval, settings.await_rel_timeout) / 2)
        self._housekeeping_handle = self.loop.call_later(interval, self._housekeeping)

    def _housekeeping(self) -> None:
        self._housekeeping_handle = None
        for channel in list(self.channels.values()):
            channel.housekeeping()
        if self.channels:
            self._schedule_housekeeping()

    def detach(self, channel: Channel, will) -> None:
        """``channel`` is gone: publish or schedule its will, keep its session for its expiry or end it."""
        client_id = channel.client_id
        if self.channels.get(client_id) is channel:
            del self.channels[client_id]
            self.metrics.connected.set(len(self.channels))
        session = channel.session
        expiry = channel.session_expiry
        if will is not None:
            delay = float(will.properties.get("will_delay_interval", 0)) if will.properties else 0.0
            self.wills.schedule(client_id, self._will_message(client_id, will, delay), min(delay, expiry))
        if session is None or session.channel is not channel:
            return
        session.channel = None
        if expiry <= 0:
            self.discard_session(session)
        else:
            session.expiry_handle = self.loop.call_later(expiry, self._expire_session, session)

    def _will_message(self, client_id: str, will, delay: float) -> Message:
        props = will.properties or {}
        passed = {name: props[name] for name in _WILL_PASSED_THROUGH if name in props} or None
        expires_at = None
        if "message_expiry_interval" in props:
            expires_at = self.loop.time() + delay + props["message_expiry_interval"]
        return Message(will.topic, will.payload, will.qos, will.retain, passed, client_id, expires_at)

    def _expire_session(self, session: Session) -> None:
        session.expiry_handle = None
        if session.channel is None and self.sessions.get(session.client_id) is session:
            self.discard_session(session)

    def discard_session(self, session: Session) -> None:
        for subscription in session.subscriptions.values():
            self.router.unsubscribe(session, subscription)
        dropped = len(session.mqueue)
        if dropped:
            self.metrics.dropped("session_ended").value += dropped
        session.clear()
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            self.metrics.sessions.set(len(self.sessions))
        self.wills.fire_now(session.client_id)

    # ------------------------------------------------------------------------------------- connections

    def connection_opened(self, connection: Connection) -> None:
        self.connections.add(connection)
        self.metrics.connections.inc()

    def connection_closed(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.metrics.connections.inc(-1)

    def clients(self) -> list[dict]:
        """Connected clients: client id, username, listener id, peer, protocol version, connected-at, and the
        TLS version, cipher and peer certificate subject on TLS connections."""
        return [channel.info() for channel in self.channels.values()]

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Disconnect every client (5.0: DISCONNECT 0x8B first) and wait for the sockets to close."""
        self.wills.cancel_all()
        if self._housekeeping_handle is not None:
            self._housekeeping_handle.cancel()
            self._housekeeping_handle = None
        for channel in list(self.channels.values()):
            channel.kick(rc.SERVER_SHUTTING_DOWN, "server shutting down")
        for connection in list(self.connections):
            connection.close()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection._abort()
        for session in self.sessions.values():
            if session.expiry_handle is not None:
                session.expiry_handle.cancel()
                session.expiry_handle = None
