"""``SqliteStore``: the durable state in one SQLite file (WAL mode) under ``durable_storage.data_dir``.

One writer thread owns the connection. Changes are queued on the event loop as (SQL, parameters) and handed
to the writer as one transaction; while a transaction is being committed, new changes gather in the next one
(group commit: one fsync -- ``synchronous = full`` -- for every change that arrived meanwhile, from any number
of clients). Waiters (``when_durable``, ``after_commit``) are released on the event loop when their
transaction's COMMIT returned.

Opening: the data directory is created (0700) and locked (``wharf.lock``, an exclusive ``flock``: two brokers
never share a store). A file SQLite cannot open for writing stops the start with an error naming it. A damaged
file (not a database, failed ``quick_check``) is moved aside as ``wharf.db.corrupt-<time>``, every row that
can still be read is copied into a fresh file, and what could not be read is logged and counted
(``wharf_store_recovery_dropped_total``). A torn last transaction of the WAL is discarded by SQLite itself (it
never committed, so nothing in it was acknowledged).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..inflight import AWAIT_PUBACK, AWAIT_PUBCOMP, AWAIT_PUBREC
from . import codec
from .api import RecoveredSession, RecoveredState, Store, StoreError

log = logging.getLogger("wharf_broker.store")

SCHEMA_VERSION = 1
DB_NAME = "wharf.db"

_TABLES = {
    "sessions": "client_id TEXT PRIMARY KEY, expiry_interval REAL NOT NULL, deadline REAL, subscriptions TEXT, "
                "attrs TEXT",
    "outbound": "seq INTEGER PRIMARY KEY, client_id TEXT NOT NULL, qos INTEGER, retain INTEGER, sub_ids TEXT, "
                "packet_id INTEGER, released INTEGER NOT NULL DEFAULT 0, topic TEXT, payload BLOB, props TEXT, "
                "publisher TEXT, expires REAL",
    "awaiting_rel": "client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, PRIMARY KEY (client_id, packet_id)",
    "retained": "topic TEXT PRIMARY KEY, qos INTEGER, payload BLOB, props TEXT, publisher TEXT, expires REAL",
    "wills": "client_id TEXT PRIMARY KEY, fire_at REAL NOT NULL, topic TEXT, qos INTEGER, retain INTEGER, "
             "payload BLOB, props TEXT, publisher TEXT, expires REAL",
    "meta": "key TEXT PRIMARY KEY, value TEXT",
}

_PUT_SESSION = "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)"
_DEL_SESSION = "DELETE FROM sessions WHERE client_id = ?"
_DEL_SESSION_RELS = "DELETE FROM awaiting_rel WHERE client_id = ?"
_QUEUED = ("INSERT INTO outbound (seq, client_id, qos, retain, sub_ids, topic, payload, props, publisher, expires, "
           "packet_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SENT = "UPDATE outbound SET packet_id = ? WHERE seq = ?"
_RELEASED = "UPDATE outbound SET released = 1, payload = x'' WHERE seq = ?"
_DONE = "DELETE FROM outbound WHERE seq = ?"
_DONE_MANY = "DELETE FROM outbound WHERE seq IN (SELECT value FROM json_each(?))"
_REL_ADD = "INSERT OR REPLACE INTO awaiting_rel VALUES (?, ?)"
_REL_DEL = "DELETE FROM awaiting_rel WHERE client_id = ? AND packet_id = ?"
_PUT_RETAINED = "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?, ?)"
_DEL_RETAINED = "DELETE FROM retained WHERE topic = ?"
_PUT_WILL = "INSERT OR REPLACE INTO wills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DEL_WILL = "DELETE FROM wills WHERE client_id = ?"


class Pending:
    """What ``when_durable`` returns: resolved by the commit, its callbacks run right there (no event loop hop
    per acknowledgement). It offers the part of the ``asyncio.Future`` interface the channel uses, and can be
    awaited. ``seqs``/``open``: the deliveries whose end also resolves it (see ``SqliteStore.when_durable``)."""

    __slots__ = ("value", "error", "finished", "callbacks", "seqs", "open")

    def __init__(self, value) -> None:
        self.value = value
        self.error: BaseException | None = None
        self.finished = False
        self.callbacks: list = []
        self.seqs: tuple = ()
        self.open = 0

    def add_done_callback(self, callback) -> None:
        if self.finished:
            callback(self)
        else:
            self.callbacks.append(callback)

    def done(self) -> bool:
        return self.finished

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self.error

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value

    def _resolve(self, error: BaseException | None) -> None:
        if self.finished:  # resolved early by its deliveries' end, then by the commit: once is enough
            return
        self.finished = True
        self.error = error
        for callback in self.callbacks:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - one acknowledgement must not stop the others
                log.exception("durable store: commit callback failed")
        self.callbacks = []

    def __await__(self):
        if not self.finished:
            future = asyncio.get_running_loop().create_future()
            self.add_done_callback(lambda _pending: future.done() or future.set_result(None))
            yield from future.__await__()
        return self.result()


class StoreMetrics:
    def __init__(self, registry) -> None:
        self.commits = registry.counter("wharf_store_commits_total", "Durable store transactions committed")
        self.commit_errors = registry.counter("wharf_store_commit_errors_total",
                                              "Durable store transactions that failed (disk full, I/O error)")
        self.changes = registry.counter("wharf_store_changes_total", "Changes written to the durable store")
        self.dropped = registry.counter("wharf_store_recovery_dropped_total",
                                        "Records of the durable store dropped at start-up, by reason", ("reason",))
        self.recovered = registry.gauge("wharf_store_recovered", "Records read from the durable store at start-up",
                                        ("kind",))
        self.backlog = registry.gauge("wharf_store_backlog_changes",
                                      "Changes handed to the durable store and not committed yet")
        self.startup_seconds = registry.gauge("wharf_store_startup_seconds",
                                              "Time spent opening and reading the durable store")


class SqliteStore(Store):
    enabled = True

    def __init__(self, data_dir: Path, settings, registry) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.settings = settings
        self.metrics = StoreMetrics(registry)
        self.changes = 0
        self._commits = self.metrics.commits.labels()
        self._commit_errors = self.metrics.commit_errors.labels()
        self._changed = self.metrics.changes.labels()
        self._backlog = self.metrics.backlog.labels()
        self._con: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wharf-store")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._offset = 0.0  # loop time - wall time
        self._ops: list = []
        self._waiters: list = []
        self._scheduled = False
        self._busy = False
        self._closed = False
        self._failing = False
        self._seq = 0
        self._batch = 0  # batches handed to the writer so far
        self._wills: set[str] = set()
        self._last_message = None
        self._last_columns: tuple = ()
        # seq -> index in ``_ops`` of deliveries inserted by the batch not yet handed to the writer: a delivery
        # acknowledged before then is never written at all (an online subscriber's usual case).
        self._fresh: dict[int, int] = {}
        # seq -> the Pending of the QoS 1 PUBLISH that produced the delivery, while that Pending waits for it.
        self._watch: dict[int, Pending] = {}

    # ------------------------------------------------------------------------------------------ open / close

    async def open(self, loop) -> RecoveredState:
        self._loop = loop
        self._offset = loop.time() - time.time()
        started = time.monotonic()
        state = await loop.run_in_executor(self._executor, self._open_sync)
        elapsed = time.monotonic() - started
        self.metrics.startup_seconds.set(round(elapsed, 3))
        for reason, count in state.dropped.items():
            self.metrics.dropped.labels(reason=reason).inc(count)
        queued = sum(len(s.outbound) for s in state.sessions)
        for kind, count in (("sessions", len(state.sessions)), ("messages", queued),
                            ("retained", len(state.retained)), ("wills", len(state.wills))):
            self.metrics.recovered.labels(kind=kind).set(count)
        log.info("durable store %s: %d sessions, %d queued/in-flight messages, %d retained, %d delayed wills "
                 "read in %.3fs", self.path, len(state.sessions), queued, len(state.retained), len(state.wills),
                 elapsed)
        if state.dropped:
            log.error("durable store %s: dropped at start-up: %s", self.path,
                      ", ".join(f"{count} {reason}" for reason, count in sorted(state.dropped.items())))
        return state

    def _open_sync(self) -> RecoveredState:
        directory = self.data_dir
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"durable_storage.data_dir {directory}: cannot create it: {exc.strerror}") from exc
        lock_path = directory / "wharf.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"{lock_path}: {exc.strerror} (the broker needs read and write access to "
                             f"durable_storage.data_dir {directory})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"durable_storage.data_dir {directory} is in use by another broker process "
                             f"({lock_path} is locked)") from exc
        self._lock_fd = fd
        try:
            dropped: dict[str, int] = {}
            self._con = self._open_checked(dropped)
            state = self._load(dropped)
        except BaseException:
            self._release()
            raise
        state.dropped = dropped
        return state

    def _connect(self, path: Path) -> sqlite3.Connection:
        con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            try:
                os.chmod(path, 0o600)  # SQLite creates its WAL and shared-memory files with the same mode
            except OSError:
                pass
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL mode (journal_mode is {mode})")
            con.execute(f"PRAGMA synchronous={self.settings.synchronous.upper()}")
            for table, columns in _TABLES.items():
                con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(f"{path}: schema version {row[0]} is not {SCHEMA_VERSION} (written by another "
                                 "version of the broker)")
        except BaseException:
            con.close()
            raise
        return con

    def _open_checked(self, dropped: dict) -> sqlite3.Connection:
        path = self.path
        reason = None
        try:
            con = self._connect(path)
            check = con.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                reason = "; ".join(str(row[0]) for row in check[:3])
                con.close()
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{path}: cannot open the durable store: {exc} (check the permissions of the file "
                             f"and of {self.data_dir}, and free space)") from exc
        except sqlite3.DatabaseError as exc:
            reason = str(exc)
        if reason is None:
            return con
        return self._salvage(reason, dropped)

    def _salvage(self, reason: str, dropped: dict) -> sqlite3.Connection:
        """Move the damaged file aside and copy every row that can still be read into a fresh one."""
        path = self.path
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        log.error("durable store %s is damaged (%s): moving it to %s and keeping what can be read", path, reason,
                  aside)
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
        con = self._connect(path)
        kept: dict[str, int] = {}
        try:
            old = sqlite3.connect(str(aside), isolation_level=None)
        except sqlite3.DatabaseError:
            old = None
        for table in _TABLES:
            if table == "meta":
                continue
            copied = 0
            try:
                if old is None:
                    raise sqlite3.DatabaseError("unreadable")
                cursor = old.execute(f"SELECT * FROM {table}")
                width = len(_TABLES[table].split(", PRIMARY KEY")[0].split(", "))
                insert = f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * width)})"
                while True:
                    rows = cursor.fetchmany(512)
                    if not rows:
                        break
                    con.executemany(insert, [row[:width] for row in rows if len(row) >= width])
                    copied += len(rows)
            except sqlite3.DatabaseError as exc:
                log.error("durable store %s: table %s unreadable after %d rows: %s", aside, table, copied, exc)
                dropped["unreadable_table"] = dropped.get("unreadable_table", 0) + 1
            kept[table] = copied
        if old is not None:
            old.close()
        dropped["corrupt_file"] = dropped.get("corrupt_file", 0) + 1
        log.error("durable store %s: salvaged %s from %s", path,
                  ", ".join(f"{count} {table}" for table, count in kept.items()), aside)
        return con

    def _load(self, dropped: dict) -> RecoveredState:
        con = self._con
        offset = self._offset
        state = RecoveredState()
        sessions: dict[str, RecoveredSession] = {}

        def drop(reason: str, sql: str | None = None, params: tuple = ()) -> None:
            dropped[reason] = dropped.get(reason, 0) + 1
            if sql is not None:
                con.execute(sql, params)

        for client_id, expiry, deadline, subscriptions, attrs in con.execute("SELECT * FROM sessions"):
            try:
                sessions[client_id] = RecoveredSession(client_id, float(expiry), deadline,
                                                       codec.subscriptions_in(subscriptions),
                                                       json.loads(attrs or "{}"))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("durable store %s: session %r undecodable (%s): dropped", self.path, client_id, exc)
                drop("undecodable", _DEL_SESSION, (client_id,))
        rows = con.execute("SELECT seq, client_id, qos, retain, sub_ids, packet_id, released, topic, payload, props, "
                           "publisher, expires FROM outbound ORDER BY seq")
        for seq, client_id, qos, retain, sub_ids, packet_id, released, topic, payload, props, publisher, expires \
                in rows.fetchall():
            self._seq = max(self._seq, seq)
            session = sessions.get(client_id)
            if session is None:
                drop("orphaned", _DONE, (seq,))
                continue
            try:
                if released:
                    message = None
                else:
                    message = codec.message_from(topic, payload, qos, retain, props, publisher, expires, offset)
                state_code = (AWAIT_PUBCOMP if released else AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC) \
                    if packet_id else None
                if packet_id is not None and not 0 < packet_id < 65536:
                    raise ValueError(f"packet id {packet_id}")
                session.outbound.append((seq, message, int(qos), bool(retain), codec.sub_ids_in(sub_ids),
                                         packet_id, state_code))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("durable store %s: message %d of %r undecodable (%s): dropped", self.path, seq,
                          client_id, exc)
                drop("undecodable", _DONE, (seq,))
        for client_id, packet_id in con.execute("SELECT client_id, packet_id FROM awaiting_rel").fetchall():
            session = sessions.get(client_id)
            if session is None:
                drop("orphaned", _REL_DEL, (client_id, packet_id))
            else:
                session.awaiting_rel.append(packet_id)
        now = time.time()
        for topic, qos, payload, props, publisher, expires in con.execute("SELECT * FROM retained").fetchall():
            if expires is not None and expires <= now:
                con.execute(_DEL_RETAINED, (topic,))
                continue
            try:
                state.retained.append(codec.message_from(topic, payload, qos, True, props, publisher, expires,
                                                         offset))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("durable store %s: retained message on %r undecodable (%s): dropped", self.path, topic,
                          exc)
                drop("undecodable", _DEL_RETAINED, (topic,))
        for row in con.execute("SELECT * FROM wills").fetchall():
            client_id, fire_at, topic, qos, retain, payload, props, publisher, expires = row
            try:
                message = codec.message_from(topic, payload, qos, retain, props, publisher, expires, offset)
            except (ValueError, TypeError, KeyError) as exc:
                log.error("durable store %s: will of %r undecodable (%s): dropped", self.path, client_id, exc)
                drop("undecodable", _DEL_WILL, (client_id,))
                continue
            self._wills.add(client_id)
            state.wills.append((client_id, fire_at - now, message))
        state.sessions = list(sessions.values())
        return state

    async def close(self) -> None:
        """Commit what is queued, checkpoint the WAL into the database file and release the lock."""
        if self._closed or self._loop is None:
            return
        if self._ops or self._busy or self._waiters:
            try:
                await self.when_durable(None)
            except StoreError:
                pass
        self._closed = True
        await self._loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._con is not None:
            try:
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("durable store %s: checkpoint at shutdown failed: %s", self.path, exc)
            self._con.close()
            self._con = None
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------------------------------ changes

    def _op(self, sql: str, params: tuple) -> None:
        if self._closed:
            return
        self._ops.append((sql, params))
        self.changes += 1
        if not self._scheduled and not self._busy:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def put_session(self, session, expiry_interval: float, deadline: float | None) -> None:
        newly = session.store is None
        session.store = self
        self._op(_PUT_SESSION, (session.client_id, expiry_interval, deadline,
                                codec.subscriptions_out(session.subscriptions), codec.attrs_out(session)))
        if newly:  # messages queued while it was not durable become durable with it
            for item in session.mqueue.items():
                if item.qos and not item.seq:
                    item.seq = self.queued(session, item.message, item.qos, item.retain, item.sub_ids)

    def delete_session(self, session) -> None:
        client_id = session.client_id
        for item in session.mqueue.items():
            if item.seq:
                self._op(_DONE, (item.seq,))
        for entry in session.inflight.entries.values():
            if entry.seq:
                self._op(_DONE, (entry.seq,))
        self._op(_DEL_SESSION_RELS, (client_id,))
        self._op(_DEL_SESSION, (client_id,))
        session.store = None

    def queued(self, session, message, qos: int, retain: bool, sub_ids: tuple) -> int:
        self._seq = seq = self._seq + 1
        if self._last_message is not message:  # one message often goes to many sessions in a row
            self._last_message = message
            self._last_columns = codec.message_columns(message, self._offset)
        topic, payload, _qos, props, publisher, expires = self._last_columns
        self._fresh[seq] = len(self._ops)
        # A list: ``sent`` fills in the packet id in place while the row is still in the gathering batch.
        self._op(_QUEUED, [seq, session.client_id, qos, retain, codec.sub_ids_out(sub_ids) if sub_ids else None,
                           topic, payload, props, publisher, expires, None])
        return seq

    def sent(self, session, seq: int, packet_id: int) -> None:
        index = self._fresh.get(seq)
        if index is not None:  # still in the batch being gathered: insert it with its packet id
            self._ops[index][1][10] = packet_id
            self.changes += 1
        else:
            self._op(_SENT, (packet_id, seq))

    def released(self, session, seq: int) -> None:
        self._op(_RELEASED, (seq,))

    def done(self, session, seq: int) -> None:
        index = self._fresh.pop(seq, None)
        if index is not None:  # never handed to the writer: nothing to write, nothing to delete
            self._ops[index] = None
            self.changes += 1
        else:
            self._op(_DONE, (seq,))
        if self._watch:
            pending = self._watch.pop(seq, None)
            if pending is not None:
                pending.open -= 1
                if not pending.open:  # every delivery of its message is over: nothing left to keep
                    pending._resolve(None)

    def awaiting_rel(self, session, packet_id: int, present: bool) -> None:
        self._op(_REL_ADD if present else _REL_DEL, (session.client_id, packet_id))

    def put_retained(self, message) -> None:
        topic, payload, qos, props, publisher, expires = codec.message_columns(message, self._offset)
        self._op(_PUT_RETAINED, (topic, qos, payload, props, publisher, expires))

    def delete_retained(self, topic: str) -> None:
        self._op(_DEL_RETAINED, (topic,))

    def put_will(self, client_id: str, message, delay: float) -> None:
        topic, payload, qos, props, publisher, expires = codec.message_columns(message, self._offset)
        self._wills.add(client_id)
        self._op(_PUT_WILL, (client_id, time.time() + delay, topic, qos, message.retain, payload, props, publisher,
                             expires))

    def delete_will(self, client_id: str) -> None:
        if client_id in self._wills:
            self._wills.discard(client_id)
            self._op(_DEL_WILL, (client_id,))

    # ------------------------------------------------------------------------------------------ commits

    def position(self) -> tuple[int, int, int]:
        return self._batch, len(self._ops), self._seq

    def when_durable(self, value, since: tuple[int, int, int] | None = None) -> Pending:
        pending = Pending(value)
        if since is not None and self._deliveries_only(since):
            first = since[2]
            last = self._seq
            fresh = self._fresh
            if last == first + 1:  # one durable subscriber: the usual case
                seqs = (last,) if last in fresh else ()
            else:
                seqs = tuple(seq for seq in range(first + 1, last + 1) if seq in fresh)
            if not seqs:  # every delivery ended already (dropped, not sendable): nothing to keep
                pending.finished = True
                return pending
            pending.seqs = seqs
            pending.open = len(seqs)
            watch = self._watch
            for seq in seqs:
                watch[seq] = pending
        self._waiters.append(pending)
        self._schedule()
        return pending

    def _deliveries_only(self, since: tuple[int, int, int]) -> bool:
        """Whether every change queued since ``position()`` returned ``since`` is a delivery created since then
        (or its end): then those deliveries are all that stands between the caller and its acknowledgement."""
        batch, start, first = since
        if batch != self._batch:  # handed to the writer meanwhile: the deliveries are not tracked any more
            return False
        ops = self._ops
        for index in range(start, len(ops)):
            op = ops[index]
            if op is None or op[0] is _DONE:
                continue
            if op[0] is not _QUEUED or op[1][0] <= first:
                return False
        return True

    def after_commit(self, callback, *args) -> None:
        self._waiters.append((None, callback, args))
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._busy:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not (self._ops or self._waiters):
            return
        ops, self._ops = self._ops, []
        self._fresh.clear()
        self._batch += 1
        waiters, self._waiters = self._waiters, []
        count = sum(1 for op in ops if op is not None)
        if not count:  # every change cancelled out (deliveries acknowledged in the batch): no transaction
            self._notify(None, 0, waiters)
            return
        self._busy = True
        done = self._loop.run_in_executor(self._executor, self._commit, ops)
        self._backlog.value = count
        done.add_done_callback(lambda future: self._committed(future, count, waiters))

    def _commit(self, ops: list) -> None:
        """(writer thread) One transaction for ``ops``; consecutive changes of one kind go in one executemany."""
        if not ops:
            return
        con = self._con
        if con is None:
            raise StoreError(f"durable store {self.path} is closed")
        try:
            con.execute("BEGIN IMMEDIATE")
            sql = None
            group: list = []
            finished = []  # deliveries done with: deleted together at the end, in one statement
            for op in ops:
                if op is None:  # a delivery inserted and finished within this batch
                    continue
                op_sql, params = op
                if op_sql is _DONE:
                    finished.append(params[0])
                    continue
                if op_sql is not sql:
                    if group:
                        con.executemany(sql, group)
                    sql, group = op_sql, []
                group.append(params)
            if group:
                con.executemany(sql, group)
            if finished:
                con.execute(_DONE_MANY, (json.dumps(finished),))
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise StoreError(f"durable store {self.path}: commit failed: {exc}") from exc

    def _committed(self, future, count: int, waiters: list) -> None:
        self._busy = False
        self._backlog.value = len(self._ops)
        error = None if future.cancelled() else future.exception()
        if future.cancelled():
            error = StoreError(f"durable store {self.path}: commit cancelled")
        self._notify(error, count, waiters)
        if self._ops or self._waiters:
            self._flush()

    def _notify(self, error: BaseException | None, count: int, waiters: list) -> None:
        """Tell the waiters of a batch that it is on disk (``error`` None) or that its commit failed."""
        if error is None:
            if count:
                self._commits.value += 1
                self._changed.value += count
            if count and self._failing:
                self._failing = False
                log.warning("durable store %s: commits succeed again", self.path)
        else:
            self._commit_errors.value += 1
            if not isinstance(error, StoreError):
                error = StoreError(f"durable store {self.path}: commit failed: {error!r}")
            if not self._failing:
                self._failing = True
                log.error("%s (%d changes lost; publishers of messages for durable sessions are told)", error,
                          count)
        watch = self._watch
        for waiter in waiters:
            if waiter.__class__ is Pending:
                if waiter.open and watch:
                    for seq in waiter.seqs:
                        if watch.get(seq) is waiter:
                            del watch[seq]
                waiter._resolve(error)
                continue
            try:
                waiter[1](error is None, *waiter[2])
            except Exception:  # noqa: BLE001 - one callback must not stop the others
                log.exception("durable store: commit callback failed")

    def status(self) -> dict:
        return {"enable": True, "path": str(self.path), "failing": self._failing, "queued_changes": len(self._ops)}
