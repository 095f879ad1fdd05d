"""The broker application core: config, router, retained store, sessions, wills, authentication, metrics.

Listeners create servers with ``protocol_factory(listener)``; every accepted socket becomes a ``Connection``
whose ``Channel`` talks to this object. ``clients()`` lists the connected clients for the admin API and
``shutdown()`` disconnects everyone (5.0 clients hear "server shutting down" first).

With ``durable_storage`` on, ``start()`` reads the durable store back (persistent sessions with their
subscriptions, queued and in-flight messages and QoS 2 receipts; retained messages; delayed wills) and the
broker reports changes of durable state to it. ``publish`` then returns a future instead of a count when the
message went into a durable session (or is retained): the channel acknowledges once it is on disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Generator
from typing import Any, Callable, cast

from .access import AccessControl
from .auth import AuthChain, Authenticator
from .authz import guard_for, read_guard
from .channel import Channel
from .config.model import BrokerConfig
from .connection import Connection
from .deadlines import Deadlines
from .lazy import own
from .limits import exceeded
from .listener_context import ListenerContext
from .metrics import REGISTRY, Registry
from .mqtt import reason_codes as rc
from .mqtt.packets import Will
from .retain import RetainedStore
from .router import LocalRouter, Message, Router, Subscription
from .inflight import InflightEntry
from .mqueue import QueuedMessage
from .session import Session
from .tenancy import GUEST, REFUSE, RESUME, OwnerCheck
from .store import RecoveredState, open_store
from .store.codec import attrs_apply
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
        self.retained = registry.gauge("wharf_retained_messages",
                                       "Retained messages stored (not counting the broker's own $SYS messages)")
        self.bytes_received = registry.counter("wharf_bytes_received_total", "Bytes read from client connections")
        self.bytes_sent = registry.counter("wharf_bytes_sent_total", "Bytes written to client connections")
        self._dropped: dict[str, Any] = {}  # reason -> the labelled child

    def dropped(self, reason: str) -> Any:
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
        # Connected clients on guest sessions (``tenancy``): under a client id whose session is someone else's.
        self.guests: set[Channel] = set()
        self.connections: set[Connection] = set()
        self.store = open_store(self.config.durable_storage, registry)
        self.wills = WillScheduler(self._publish_will, self.store.delete_will)
        self.auth = AuthChain(self.config.authentication.allow_anonymous, auth_hooks)
        # Password file / HTTP authenticators, the ACL and flapping detection, as configured.
        self.access = AccessControl(self.config, registry)
        self.auth.hooks.extend(self.access.authenticators)
        self.auth.throttle = self.access.login_throttle
        self.metrics = BrokerMetrics(registry)
        self.owner_check = OwnerCheck(self.config.mqtt.session_owner_check, registry)
        self.access.authorizer.on_reload.append(self.guard_all_subscriptions)
        # Listener id -> listener object; the application wiring fills this for the admin API.
        self.listeners: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._housekeeping_handle: asyncio.TimerHandle | None = None
        # Every connection's idle-timeout or keep-alive deadline, in one-second buckets under one timer.
        self.deadlines = Deadlines(lambda: self.loop)
        self._hooks: tuple[Callable[[Message, str], None], Callable[[], float], Callable[[Session], None]] | None = None
        # Attached sessions with messages in flight or QoS 2 receipts: the only ones the housekeeping visits.
        self._tended: set[Session] = set()
        self._received = self.metrics.received.labels()  # the child: a plain attribute add per message
        # ``sys_topics.SysTopics`` while $SYS client event messages are on: told of every connect and disconnect.
        self.sys_events = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def start(self) -> None:
        """Open the durable store (when on) and bring back what it kept."""
        if self.store.enabled:
            self._recover(await self.store.open(self.loop))

    def protocol_factory(self, listener: ListenerContext) -> Callable[[], Connection]:
        """A zero-argument factory for ``loop.create_server`` that serves ``listener``."""
        return functools.partial(Connection, self, listener)

    # ------------------------------------------------------------------------------------- messages

    def publish(self, message: Message) -> int | asyncio.Future[int]:
        """Route ``message`` (storing it first if retained); returns how many sessions it went to -- or, for a
        QoS 1/2 message that changed durable state, a future of that count resolved once it is on disk."""
        self._received.value += 1
        store = self.store
        mark = store.changes
        since = store.position() if message.qos == 1 and store.enabled else None
        if message.retain and self.config.mqtt.retain_available:
            if self.retain_refusal(message) is None:
                self.retained.store(message)
                self.metrics.retained.set(self.retained.counted)
                if store.enabled:
                    if self.retained.get(message.topic) is message:
                        store.put_retained(message)
                    elif not message.payload:
                        store.delete_retained(message.topic)
        delivered = self.router.publish(message)
        if not delivered:
            self.metrics.dropped("no_subscribers").value += 1
        if store.changes != mark and message.qos:
            # QoS 1: also acknowledged once every durable session it went to acknowledged it (nothing left to
            # keep); QoS 2 waits for the commit, which its PUBREC receipt joins (exactly once after a crash).
            durable: asyncio.Future[int] = store.when_durable(delivered, since)
            return durable
        return delivered

    def _publish_will(self, message: Message) -> None:
        result = self.publish(message)
        if not isinstance(result, int):  # nobody waits for a will's commit; a failure is counted by the store
            result.add_done_callback(_consume_result)

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
        session.subscribe(full_filter, subscription)
        self.router.subscribe(session, subscription)
        if session.store is not None:
            self.store.put_session(session, session.expiry_interval, None)

    def unsubscribe(self, session: Session, full_filter: str) -> bool:
        subscription = session.subscriptions.pop(full_filter, None)
        if subscription is None:
            return False
        self.router.unsubscribe(session, subscription)
        if session.store is not None:
            self.store.put_session(session, session.expiry_interval, None)
        return True

    def deliver_retained(self, session: Session, subscription: Subscription) -> None:
        """The retained messages a new subscription receives (RETAIN flag set), each through the
        subscription's read check if it has one.

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
        # The broker attaches only its Channels to sessions (``attach``, ``guest_session``).
        self._deliver_retained_slice(session, cast(Channel | None, session.channel), subscription, matches)

    def _deliver_retained_slice(self, session: Session, channel: Channel | None, subscription: Subscription,
                                matches: Generator[Message, None, None], wait: float = RETAINED_WAIT) -> None:
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
        qos, sub_ids, guard = subscription.qos, subscription.sub_ids, subscription.guard
        for _ in range(RETAINED_SLICE):
            message = next(matches, None)
            if message is None:
                return  # the match is exhausted
            if client_id is not None and message.publisher == client_id:
                continue
            if guard is not None and not guard(message.topic):
                continue
            session.deliver(message, qos, True, sub_ids)
            if session.mqueue:
                break  # the in-flight window is full: wait for it to drain
        self.loop.call_soon(self._deliver_retained_slice, session, channel, subscription, matches)

    # ------------------------------------------------------------------------------------- sessions

    def attach(self, channel: Channel, client_id: str, clean_start: bool) -> tuple[Session | None, bool]:
        """Give ``channel`` its session: take over a connected one, resume a kept one or start afresh.
        Returns (session, session present); (None, False) when the client id's session belongs to another
        identity and ``mqtt.session_owner_check = refuse``, and a guest session when it is ``discard`` -- in
        both cases the owner's session and connection are left as they are (no take-over, will kept)."""
        session = self.sessions.get(client_id)
        verdict = self.owner_verdict(channel, client_id, session.owner if session is not None else None)
        if verdict == REFUSE:
            return None, False
        if verdict == GUEST:
            return self.guest_session(channel, client_id), False
        old = self.channels.get(client_id)
        if old is not None and old is not channel:
            log.info("client %r: session taken over by a new connection from %s (old one from %s)", client_id,
                     channel.connection.peer_text, old.connection.peer_text)
            old.kick(rc.SESSION_TAKEN_OVER, "session taken over")
        self.wills.cancel(client_id)
        if session is not None and clean_start:
            self.discard_session(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, self.config.mqtt, *self._session_hooks())
            self.sessions[client_id] = session
            self.metrics.sessions.set(len(self.sessions))
        elif session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        if session.owner is not None and session.owner != channel.owner:
            self.inherit(session, channel)
        session.owner = channel.owner
        session.channel = channel
        if session.inflight.entries or session.awaiting_rel:  # kept from before: the housekeeping visits it
            self._tended.add(session)
        self._attach_durable(session, channel.session_expiry)
        self.channels[client_id] = channel
        self.metrics.connected.set(len(self.channels) + len(self.guests))
        if self._housekeeping_handle is None:
            self._schedule_housekeeping()
        return session, present

    def _session_hooks(self) -> tuple[Callable[[Message, str], None], Callable[[], float], Callable[[Session], None]]:
        """The drop counter, the clock and the busy hook every session is given: one bound method each for all of
        them (a bound method made per session costs 64 bytes each)."""
        hooks = self._hooks
        if hooks is None:
            hooks = self._hooks = (self.count_dropped, self.loop.time, self._tended.add)
        return hooks

    def owner_verdict(self, channel: Channel, client_id: str, current: tuple[str, ...] | None) -> str:
        """``tenancy.RESUME``, ``REFUSE`` or ``GUEST`` for ``channel`` asking for the session that ``current``
        owns (None: no session)."""
        if current is None:  # no session to own (the common case): no check, and no peer text built for its log
            return RESUME
        return self.owner_check.verdict(client_id, current, channel.owner, channel.connection.peer_text)

    def guard_all_subscriptions(self) -> None:
        """The ACL changed: re-decide which subscriptions need a read check (a new deny rule may overlap a filter
        granted before it), for every session, connected or not."""
        sessions = [*self.sessions.values(), *(channel.session for channel in self.guests)]
        for session in sessions:
            if session is None or session.acl is None:
                continue
            mountpoint = session.owner[2] if session.owner else ""
            for subscription in session.subscriptions.values():
                subscription.guard = guard_for(session.acl, mountpoint, subscription.topic_filter)

    def inherit(self, session: Session, channel: Channel) -> None:
        """``session_owner_check = off``: ``channel``'s identity takes another identity's session. What waits in
        it is delivered only if the new identity may read it; its subscriptions get the new identity's read
        checks when the channel resumes them (``Channel.guard_subscriptions``)."""
        session.read_check = read_guard(channel.acl, channel.mountpoint)
        dropped = session.purge(session.read_check)
        if dropped:
            self.metrics.dropped("not_authorized").value += dropped

    def guest_session(self, channel: Channel, client_id: str) -> Session:
        """A fresh session for ``channel`` that leaves ``client_id``'s owner alone: not registered under the
        client id, not in ``channels``, and ended with the connection."""
        session = Session(client_id, self.config.mqtt, *self._session_hooks())
        session.owner = channel.owner
        session.guest = True
        session.channel = channel
        self.guests.add(channel)
        self.metrics.connected.set(len(self.channels) + len(self.guests))
        if self._housekeeping_handle is None:
            self._schedule_housekeeping()
        return session

    def _attach_durable(self, session: Session, expiry: float) -> None:
        """A session with an expiry is durable (when durable storage is on); one without is not (any more)."""
        store = self.store
        if not store.enabled:
            return
        session.expiry_interval = expiry
        if expiry > 0:
            store.put_session(session, expiry, None)
        elif session.store is not None:
            store.delete_session(session)

    def _schedule_housekeeping(self) -> None:
        # One sweep for all clients instead of a timer per connection (a timer costs ~500 bytes each).
        settings = self.config.mqtt
        interval = max(0.05, min(settings.retry_interval, settings.await_rel_timeout) / 2)
        self._housekeeping_handle = self.loop.call_later(interval, self._housekeeping)

    def _housekeeping(self) -> None:
        """3.1.1 retries and stale QoS 2 receipts, for the attached sessions that have any (``_tended``): idle
        clients cost the sweep nothing."""
        self._housekeeping_handle = None
        tended = self._tended
        for session in list(tended):
            channel = cast("Channel | None", session.channel)
            if channel is not None:
                channel.housekeeping()
            if channel is None or not (session.inflight.entries or session.awaiting_rel):
                tended.discard(session)  # back when it is busy again (``Session``) or attached again (``attach``)
        if self.channels or self.guests:
            self._schedule_housekeeping()

    def detach(self, channel: Channel, will: Will | None) -> None:
        """``channel`` is gone: publish or schedule its will, keep its session for its expiry or end it."""
        client_id = channel.client_id
        assert client_id is not None  # only a channel past CONNECT detaches (``Channel.terminate``)
        session = channel.session
        if session is not None and session.guest:
            self._detach_guest(channel, will)
            return
        if self.channels.get(client_id) is channel:
            del self.channels[client_id]
            self.metrics.connected.set(len(self.channels) + len(self.guests))
        expiry = channel.session_expiry
        if will is not None:
            delay = min(float(will.properties.get("will_delay_interval", 0)) if will.properties else 0.0, expiry)
            message = self._will_message(client_id, will, delay)
            self.wills.schedule(client_id, message, delay)
            if delay > 0 and session is not None and session.store is not None:
                self.store.put_will(client_id, message, delay)
        if session is None or session.channel is not channel:
            return
        session.channel = None
        if expiry <= 0:
            self.discard_session(session)
        else:
            session.expiry_handle = self.loop.call_later(expiry, self._expire_session, session)
            if session.store is not None:
                session.expiry_interval = expiry
                self.store.put_session(session, expiry, time.time() + expiry)

    def _detach_guest(self, channel: Channel, will: Will | None) -> None:
        """A guest's connection ended: its session ends with it, and its will (no delay: the session it could
        wait for is gone) is published now, without touching the owner's pending will."""
        self.guests.discard(channel)
        self.metrics.connected.set(len(self.channels) + len(self.guests))
        session = channel.session
        assert session is not None and channel.client_id is not None  # a guest past CONNECT
        session.channel = None
        self.discard_session(session)
        if will is not None:
            self.publish(self._will_message(channel.client_id, will, 0.0))

    def _will_message(self, client_id: str, will: Will, delay: float) -> Message:
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
        self._tended.discard(session)
        for subscription in session.subscriptions.values():
            self.router.unsubscribe(session, subscription)
        dropped = len(session.mqueue)
        if dropped:
            self.metrics.dropped("session_ended").value += dropped
        if session.store is not None:
            self.store.delete_session(session)
        session.clear()
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        if session.guest:
            return  # the client id's pending will, if any, is the owner's
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

    def clients(self) -> list[dict[str, Any]]:
        """Connected clients: client id, username, listener id, peer, protocol version, connected-at, and the
        TLS version, cipher and peer certificate subject on TLS connections."""
        return [channel.info() for channel in [*self.channels.values(), *self.guests]]

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Disconnect every client (5.0: DISCONNECT 0x8B first) and wait for the sockets to close."""
        self.wills.cancel_all()
        self.deadlines.close()
        if self._housekeeping_handle is not None:
            self._housekeeping_handle.cancel()
            self._housekeeping_handle = None
        for channel in [*self.channels.values(), *self.guests]:
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
        await self.store.close()

    # ------------------------------------------------------------------------------------- durable state

    def _recover(self, state: RecoveredState) -> None:
        """Rebuild what the durable store kept: sessions (expiry restarting from their deadline, or from now
        for those connected when the broker stopped), retained messages, then delayed wills."""
        loop = self.loop
        now = loop.time()
        wall = time.time()
        store = self.store
        expired = []
        for record in state.sessions:
            session = Session(record.client_id, self.config.mqtt, *self._session_hooks())
            attrs_apply(session, record.attrs)
            session.expiry_interval = record.expiry_interval
            session.store = store
            for full_filter, subscription in record.subscriptions:
                session.subscribe(full_filter, subscription)
                self.router.subscribe(session, subscription)
            self._recover_outbound(session, record.outbound, now)
            for packet_id in record.awaiting_rel:
                session.await_release(packet_id, now)
            self.sessions[record.client_id] = session
            remaining = record.expiry_interval if record.deadline is None else record.deadline - wall
            if remaining <= 0:
                expired.append(session)
            else:
                session.expiry_handle = loop.call_later(remaining, self._expire_session, session)
        self.metrics.sessions.set(len(self.sessions))
        for message in state.retained:
            self.retained.store(message)
        self.metrics.retained.set(self.retained.counted)
        for client_id, delay, message in state.wills:
            if delay > 0:
                self.wills.schedule(client_id, message, delay)
            else:
                store.delete_will(client_id)
                self._publish_will(message)
        for session in expired:
            self.discard_session(session)
        if expired:
            log.info("durable store: %d sessions expired while the broker was down", len(expired))

    def _recover_outbound(self, session: Session,
                          outbound: list[tuple[int, Message, int, bool, tuple[int, ...], int | None, int]],
                          now: float) -> None:
        entries = session.inflight.entries = own(session.inflight.entries)
        for seq, message, qos, retain, sub_ids, packet_id, state in outbound:
            if packet_id is None:
                dropped = session.mqueue.push(QueuedMessage(message, qos, retain, sub_ids, seq))
                if dropped is not None:  # the queue limit shrank since
                    self.count_dropped(dropped.message, "queue_full")
                    self.store.done(session, dropped.seq)
            elif packet_id in entries:  # cannot happen unless the file was edited: keep the first
                self.store.done(session, seq)
            else:
                entry = entries[packet_id] = InflightEntry(message, qos, retain, sub_ids, now, seq)
                entry.state = state
        if entries:
            session.inflight._last_id = max(entries)


def _consume_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
