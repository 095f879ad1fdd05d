"""A client's session: its subscriptions, the in-flight window, the offline/overflow queue and the QoS 2
packet identifiers it is still waiting to see released. It outlives connections when it has an expiry.

``deliver`` is the router's way in. While a channel is attached it writes through it (QoS 1/2 within the
in-flight window, the rest queued in order); while none is, QoS 1/2 -- and QoS 0 when ``mqueue_store_qos0`` --
wait in the queue.

A durable session (``store`` set: durable storage on and session expiry > 0) reports every QoS 1/2 delivery to
its store: queued, given a packet id, released (QoS 2 PUBREC), done. A durable QoS 2 delivery is written to
the client only once its packet id is on disk (``HELD`` until then), so that after a crash it is resent with
the packet id the client may already have seen: exactly once holds across restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .lazy import EMPTY, own
from .inflight import AWAIT_PUBACK, AWAIT_PUBCOMP, AWAIT_PUBREC, HELD, Inflight, InflightEntry
from .mqueue import MessageQueue, QueuedMessage

if TYPE_CHECKING:
    from .authz import ClientAcl
    from .config.model import MqttSettings
    from .router import Message, Subscription
    from .store.api import Store


class Outlet(Protocol):
    """What a session needs of the channel attached to it (``channel.Channel``): the seam by which it sends."""

    @property
    def send_window(self) -> int: ...

    def write_publish(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...], packet_id: int,
                      dup: bool) -> bool: ...

    def write_pubrel(self, packet_id: int) -> None: ...


class Session:
    __slots__ = ("client_id", "subscriptions", "inflight", "mqueue", "awaiting_rel", "channel", "expiry_interval",
                 "expiry_handle", "upgrade_qos", "owner", "guest", "read_check", "acl", "store", "_on_drop",
                 "_clock", "_on_busy")

    def __init__(self, client_id: str, settings: MqttSettings, on_drop: Callable[[Message, str], None],
                 clock: Callable[[], float], on_busy: Callable[[Session], None] | None = None) -> None:
        self.client_id = client_id
        # By filter as subscribed (with any $share prefix). This and ``awaiting_rel`` start as the shared
        # ``lazy.EMPTY``: write through ``subscribe`` / ``await_release``.
        self.subscriptions: dict[str, Subscription] = EMPTY
        self.inflight = Inflight()
        self.mqueue = MessageQueue(settings.max_mqueue_len, settings.mqueue_drop_policy, settings.mqueue_store_qos0)
        self.awaiting_rel: dict[int, float] = EMPTY  # inbound QoS 2 packet id -> when its PUBLISH arrived
        self.channel: Outlet | None = None
        self.expiry_interval = 0.0
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.upgrade_qos = settings.upgrade_qos
        # The identity this session belongs to (``tenancy.session_owner``), None until a channel attaches.
        self.owner: tuple[str, ...] | None = None
        # A guest session: another identity's connection under a client id whose session belongs to someone else
        # (``session_owner_check = discard``). Not registered under the client id; it ends with its connection.
        self.guest = False
        # Set when the session passed to another identity (``session_owner_check = off``): that identity's read
        # check, for messages that reach the session without a subscription's (handed over by another node).
        self.read_check: Callable[[str], bool] | None = None
        # The ACL view of the client that last attached (``authz.ClientAcl``), for re-deciding the subscriptions'
        # read checks when the ACL is reloaded.
        self.acl: ClientAcl | None = None
        self.store: Store | None = None  # the durable store while this session is durable
        self._on_drop = on_drop  # (message, reason) -> None, for metrics
        self._clock = clock
        # Told when the session gets its first in-flight message or QoS 2 receipt (the broker's housekeeping then
        # visits it until both are empty again; idle sessions are never visited).
        self._on_busy = on_busy

    def __repr__(self) -> str:
        return f"Session({self.client_id!r})"

    def subscribe(self, full_filter: str, subscription: Subscription) -> None:
        """Record ``subscription`` under ``full_filter`` (routing it is the broker's part)."""
        subscriptions = self.subscriptions = own(self.subscriptions)
        subscriptions[full_filter] = subscription

    def await_release(self, packet_id: int, since: float) -> None:
        """Remember inbound QoS 2 ``packet_id`` (routed at ``since``) until its PUBREL."""
        awaiting = self.awaiting_rel = own(self.awaiting_rel)
        if not awaiting and self._on_busy is not None:
            self._on_busy(self)
        awaiting[packet_id] = since

    # ------------------------------------------------------------------------------------------ delivery

    def deliver(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None:
        """Deliver ``message`` under a subscription granting ``qos``, with the RETAIN flag ``retain``."""
        if qos > message.qos and not self.upgrade_qos:
            qos = message.qos
        channel = self.channel
        if qos == 0:
            if channel is not None:
                channel.write_publish(message, 0, retain, sub_ids, 0, False)
                return
        store = self.store
        seq = store.queued(self, message, qos, retain, sub_ids) if store is not None and qos else 0
        if qos and channel is not None and not self.mqueue and len(self.inflight.entries) < channel.send_window:
            self._send(message, qos, retain, sub_ids, seq)
            return
        dropped = self.mqueue.push(QueuedMessage(message, qos, retain, sub_ids, seq))
        if dropped is not None:
            self._on_drop(dropped.message, "queue_full")
            if dropped.seq and store is not None:
                store.done(self, dropped.seq)

    def _send(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...], seq: int = 0) -> None:
        entry = InflightEntry(message, qos, retain, sub_ids, self._clock(), seq)
        packet_id = self.inflight.add(entry)
        if len(self.inflight.entries) == 1 and self._on_busy is not None:
            self._on_busy(self)
        if seq and self.store is not None:
            self.store.sent(self, seq, packet_id)
            if qos == 2:  # on the wire only once its packet id is on disk
                entry.sent_at = HELD
                self.store.after_commit(self._write_held, packet_id, entry)
                return
        channel = self.channel  # attached (the callers check); without one the entry waits for ``resume``
        if channel is not None and not channel.write_publish(message, qos, retain, sub_ids, packet_id, False):
            # Not sendable (expired, or too big for the client): done with, as the spec asks.
            self._finished(packet_id)

    def _write_held(self, ok: bool, packet_id: int, entry: InflightEntry) -> None:
        if self.inflight.entries.get(packet_id) is not entry or entry.sent_at != HELD:
            return
        if not ok:  # not on disk: the publisher was told and sends it again
            self._finished(packet_id)
            self._on_drop(entry.message, "store_failed")
            self.drain()
            return
        entry.sent_at = self._clock()
        channel = self.channel
        if channel is not None and not channel.write_publish(entry.message, entry.qos, entry.retain, entry.sub_ids,
                                                             packet_id, False):
            self._finished(packet_id)

    def _finished(self, packet_id: int) -> None:
        """``packet_id``'s delivery is over (acknowledged, or not sendable)."""
        entry = self.inflight.entries.pop(packet_id, None)
        if entry is not None and entry.seq and self.store is not None:
            self.store.done(self, entry.seq)

    def drain(self) -> None:
        """Move queued messages out while the window has room."""
        channel = self.channel
        mqueue = self.mqueue
        entries = self.inflight.entries
        while channel is not None and mqueue and len(entries) < channel.send_window:
            item = mqueue.pop()
            if item is None:
                break
            if item.qos == 0:
                channel.write_publish(item.message, 0, item.retain, item.sub_ids, 0, False)
            else:
                self._send(item.message, item.qos, item.retain, item.sub_ids, item.seq)
            channel = self.channel

    def resume(self) -> None:
        """A channel (re)attached: resend everything unacknowledged with its original packet id, then drain."""
        channel = self.channel
        if channel is None:
            return
        now = self._clock()
        for packet_id, entry in list(self.inflight.entries.items()):
            if entry.sent_at == HELD:  # written when its commit completes
                continue
            entry.sent_at = now
            if entry.state == AWAIT_PUBCOMP:
                channel.write_pubrel(packet_id)
            elif not channel.write_publish(entry.message, entry.qos, entry.retain, entry.sub_ids, packet_id, True):
                self._finished(packet_id)
        self.drain()

    def retry(self, older_than: float) -> None:
        """Resend in-flight entries sent before ``older_than`` (3.1.1's retry interval)."""
        channel = self.channel
        if channel is None:
            return
        now = self._clock()
        for packet_id, entry in list(self.inflight.entries.items()):
            if entry.sent_at > older_than:
                continue
            entry.sent_at = now
            if entry.state == AWAIT_PUBCOMP:
                channel.write_pubrel(packet_id)
            elif not channel.write_publish(entry.message, entry.qos, entry.retain, entry.sub_ids, packet_id, True):
                self._finished(packet_id)

    # -------------------------------------------------------------------------------------- acknowledgements

    def puback(self, packet_id: int) -> bool:
        entry = self.inflight.entries.get(packet_id)
        if entry is None or entry.state != AWAIT_PUBACK or entry.sent_at == HELD:
            return False
        self._finished(packet_id)
        if self.mqueue:
            self.drain()
        return True

    def pubrec(self, packet_id: int, failed: bool) -> bool:
        """PUBREC arrived; returns whether the packet id was in flight. A failed PUBREC (5.0 reason >= 0x80)
        ends the exchange; otherwise the entry now waits for PUBCOMP."""
        entry = self.inflight.entries.get(packet_id)
        if entry is None or entry.state not in (AWAIT_PUBREC, AWAIT_PUBCOMP) or entry.sent_at == HELD:
            return False
        if failed:
            self._finished(packet_id)
            self.drain()
        else:
            if entry.seq and entry.state == AWAIT_PUBREC and self.store is not None:
                self.store.released(self, entry.seq)
            entry.state = AWAIT_PUBCOMP
            entry.message = None  # delivered: only the packet id matters now
            entry.sent_at = self._clock()
        return True

    def pubcomp(self, packet_id: int) -> bool:
        entry = self.inflight.entries.get(packet_id)
        if entry is None or entry.state != AWAIT_PUBCOMP:
            return False
        self._finished(packet_id)
        if self.mqueue:
            self.drain()
        return True

    def expire_awaiting_rel(self, older_than: float) -> int:
        stale = [packet_id for packet_id, at in self.awaiting_rel.items() if at <= older_than]
        for packet_id in stale:
            del self.awaiting_rel[packet_id]
            if self.store is not None:
                self.store.awaiting_rel(self, packet_id, False)
        return len(stale)

    def purge(self, readable: Callable[[str], bool]) -> int:
        """Drop queued and unacknowledged messages whose topic ``readable(topic)`` refuses (the session passed to
        another identity); returns how many. A durable session forgets them in its store too."""
        store = self.store
        refused: list[QueuedMessage | InflightEntry] = [item for item in self.mqueue.items()
                                                        if not readable(item.message.topic)]
        if refused:
            gone = set(map(id, refused))
            self.mqueue.keep(lambda item: id(item) not in gone)
        for packet_id, entry in list(self.inflight.entries.items()):
            if entry.message is not None and not readable(entry.message.topic):
                self.inflight.pop(packet_id)
                refused.append(entry)
        if store is not None:
            for item in refused:
                if item.seq:
                    store.done(self, item.seq)
        return len(refused)

    def clear(self) -> None:
        self.subscriptions = EMPTY
        self.inflight.clear()
        self.mqueue.clear()
        self.awaiting_rel = EMPTY


__all__ = ["Session", "AWAIT_PUBACK", "AWAIT_PUBREC", "AWAIT_PUBCOMP"]
