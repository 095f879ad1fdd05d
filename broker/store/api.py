"""The store interface the broker calls, the no-op store, and what recovery hands back.

Contract of every method that changes state: it queues the change and returns at once (on the event loop,
never blocking); the change reaches disk with the next group commit. ``when_durable(value)`` returns a future
that resolves to ``value`` when every change queued before the call is on disk, or fails with ``StoreError``
when that commit failed (disk full, I/O error, read-only file). ``when_durable(value, since)``, with ``since``
from ``position()`` taken before an operation, also resolves as soon as every delivery that operation queued
has ended (acknowledged by its subscriber, dropped or expired) when those deliveries were the operation's only
changes: nothing is left to keep then (a QoS 1 PUBLISH that online subscribers acknowledged before the
commit). ``changes`` counts queued changes: a caller that compares it before and after an operation knows
whether the operation wrote anything durable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config.loader import expand_path, state_dir


class StoreError(RuntimeError):
    """The durable store cannot be opened or a commit failed; the message names the file."""


@dataclass
class RecoveredSession:
    client_id: str
    expiry_interval: float
    # Wall-clock time the session expires at; None when it was connected when the broker stopped.
    deadline: float | None
    subscriptions: list = field(default_factory=list)  # (full filter, Subscription)
    attrs: dict = field(default_factory=dict)
    # (seq, message, qos, retain, sub_ids, packet_id or None, inflight state or None), in seq order.
    outbound: list = field(default_factory=list)
    awaiting_rel: list = field(default_factory=list)  # inbound QoS 2 packet ids


@dataclass
class RecoveredState:
    sessions: list[RecoveredSession] = field(default_factory=list)
    retained: list = field(default_factory=list)  # Message (expires_at already on the loop clock)
    wills: list = field(default_factory=list)  # (client id, seconds until it fires, Message)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> records dropped while reading


class Store:
    """The interface (and the no-op behaviour: every change is ignored, ``when_durable`` is never needed)."""

    enabled = False
    changes = 0

    async def open(self, loop) -> RecoveredState:
        return RecoveredState()

    async def close(self) -> None:
        return None

    # -- sessions
    def put_session(self, session, expiry_interval: float, deadline: float | None) -> None:
        """Insert or replace ``session``'s record (expiry, subscriptions, generic attributes). A session
        that becomes durable also gets the messages already queued for it."""

    def delete_session(self, session) -> None:
        """The session ended: its record, queued and in-flight messages and QoS 2 receipts go."""

    # -- outgoing QoS 1/2 deliveries of a durable session
    def queued(self, session, message, qos: int, retain: bool, sub_ids: tuple) -> int:
        """A delivery entered the session (queued or about to be sent); returns its sequence number."""
        return 0

    def sent(self, session, seq: int, packet_id: int) -> None:
        """The delivery ``seq`` got packet id ``packet_id`` (it is in flight)."""

    def released(self, session, seq: int) -> None:
        """QoS 2: PUBREC arrived for ``seq``; only the packet id matters now (PUBREL sent, awaiting PUBCOMP)."""

    def done(self, session, seq: int) -> None:
        """The delivery ``seq`` is finished (acknowledged, expired or dropped)."""

    # -- incoming QoS 2 receipts (PUBREC sent, waiting for PUBREL)
    def awaiting_rel(self, session, packet_id: int, present: bool) -> None:
        """Record (``present``) or forget an inbound QoS 2 packet id of a durable session."""

    # -- retained messages and delayed wills
    def put_retained(self, message) -> None:
        """``message`` is now its topic's retained message."""

    def delete_retained(self, topic: str) -> None:
        """``topic`` has no retained message any more."""

    def put_will(self, client_id: str, message, delay: float) -> None:
        """A delayed will of a durable session, due in ``delay`` seconds."""

    def delete_will(self, client_id: str) -> None:
        """The delayed will of ``client_id`` was published or cancelled."""

    # -- commits
    def position(self) -> Any:
        """Where the queue of changes stands, for ``when_durable(value, since)``."""
        return None

    def when_durable(self, value: Any, since: Any = None):
        """A future resolving to ``value`` once every change queued so far is on disk -- or, with ``since``
        from ``position()``, once every delivery queued since then has ended if nothing else was queued."""
        raise NotImplementedError("durability is off")

    def after_commit(self, callback: Callable[..., None], *args) -> None:
        """Call ``callback(ok, *args)`` when the changes queued so far are committed (ok) or failed."""
        callback(True, *args)

    def status(self) -> dict:
        return {"enable": False}


class NullStore(Store):
    """Durability off: nothing is kept, nothing is paid."""


def default_data_dir() -> Path:
    """``data_dir = ""``: ``data`` in the state directory (``$WHARF_HOME``, else ``$XDG_STATE_HOME/wharf``, else
    ``~/.local/state/wharf``), beside the embedded default's generated certificates."""
    return state_dir() / "data"


def resolve_data_dir(value: str) -> Path:
    if not value:
        return default_data_dir()
    path = Path(expand_path(value)).expanduser()
    if not path.is_absolute():
        base = os.environ.get("WHARF_HOME")
        path = (Path(base) if base else Path.cwd()) / path
    return path


def open_store(settings, registry) -> Store:
    """The store ``durable_storage`` asks for (not opened yet: ``await store.open(loop)``)."""
    if not settings.enable:
        return NullStore()
    from .sqlite import SqliteStore
    return SqliteStore(resolve_data_dir(settings.data_dir), settings, registry)
