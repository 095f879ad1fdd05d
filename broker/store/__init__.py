"""Durable broker state (``durable_storage { ... }``): what a standalone broker keeps across restarts.

The broker talks to a ``Store`` through a small typed interface; ``NullStore`` (durability off) does nothing
and is never consulted on the hot path: a session only holds a store (``Session.store``) when it is durable
(durability on and session expiry > 0), and ``Broker.publish`` compares one counter.

``SqliteStore`` (``sqlite.py``) keeps the state in one SQLite file in WAL mode under ``data_dir``. Writes are
queued on the event loop and committed by one writer thread, many at a time (group commit: one fsync for
every change that arrived while the previous commit was on its way to disk). ``when_durable`` gives a future
that resolves once everything queued so far is on disk: the channel sends PUBACK/PUBREC for a message that
went into a durable session only then. See ``docs/durability.md``.
"""

from __future__ import annotations

from .api import NullStore, RecoveredSession, RecoveredState, Store, StoreError, open_store

__all__ = ["NullStore", "RecoveredSession", "RecoveredState", "Store", "StoreError", "open_store"]
