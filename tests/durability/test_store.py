"""The store on its own: group commit, acknowledgements released by the commit, failures reported to the
waiters, what recovery reads back, the lock, and the config keys."""

from __future__ import annotations

import asyncio

import pytest

from wharf_broker.config.errors import ConfigError
from wharf_broker.config.loader import load_string
from wharf_broker.config.model import BrokerConfig, DurableStorage
from wharf_broker.metrics import Registry
from wharf_broker.inflight import Inflight
from wharf_broker.mqueue import MessageQueue
from wharf_broker.router import Message, Subscription
from wharf_broker.store import NullStore, StoreError, open_store
from wharf_broker.store.api import default_data_dir, resolve_data_dir


def _store(path, **settings):
    return open_store(DurableStorage(enable=True, data_dir=str(path), **settings), Registry())


class _Session:
    """What the store reads of a session; ``owner`` stands for any plain attribute a session may carry."""

    __slots__ = ("client_id", "subscriptions", "inflight", "mqueue", "awaiting_rel", "store", "owner", "_private")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.subscriptions: dict = {}
        self.inflight = Inflight()
        self.mqueue = MessageQueue(None)
        self.awaiting_rel: dict = {}
        self.store = None
        self.owner = f"user:{client_id}"
        self._private = object()


def _session(client_id: str = "c") -> _Session:
    return _Session(client_id)


def test_durability_off_is_the_null_store():
    store = open_store(DurableStorage(), Registry())
    assert isinstance(store, NullStore) and not store.enabled
    assert store.changes == 0


async def test_many_changes_from_many_sessions_go_in_few_commits_and_release_their_waiters(tmp_path):
    store = _store(tmp_path)
    await store.open(asyncio.get_running_loop())
    sessions = [_session(f"c{i}") for i in range(50)]
    waiters = []
    for session in sessions:
        store.put_session(session, 60.0, None)
    for n in range(20):
        for session in sessions:
            store.queued(session, Message("t", b"x%d" % n, 1), 1, False, ())
        waiters.append(store.when_durable(n))
    assert await asyncio.gather(*waiters) == list(range(20))
    commits = store.metrics.commits.labels().value
    assert store.metrics.changes.labels().value == 50 + 50 * 20
    assert commits < 20  # grouped: far fewer transactions than acknowledgements
    await store.close()

    again = _store(tmp_path)
    state = await again.open(asyncio.get_running_loop())
    assert len(state.sessions) == 50
    assert all(len(record.outbound) == 20 for record in state.sessions)
    assert [m[1].payload for m in state.sessions[0].outbound] == [b"x%d" % n for n in range(20)]
    await again.close()


async def test_what_recovery_reads_back(tmp_path):
    loop = asyncio.get_running_loop()
    store = _store(tmp_path)
    await store.open(loop)
    session = _session("keeper")
    session.subscriptions["$share/g/a/+"] = Subscription("a/+", 2, False, True, 1, 9, "g")
    store.put_session(session, 300.0, None)
    message = Message("a/b", b"payload", 2, False, {"user_property": [("k", "v")], "correlation_data": b"\x01"},
                      "pub", loop.time() + 100)
    first = store.queued(session, message, 2, False, (9,))
    second = store.queued(session, message, 1, True, ())
    store.sent(session, first, 17)
    store.released(session, first)
    store.awaiting_rel(session, 5, True)
    store.put_retained(Message("r", b"kept", 1, True))
    store.put_will("keeper", Message("w", b"bye", 1), 30.0)
    await store.when_durable(None)
    await store.close()

    again = _store(tmp_path)
    state = await again.open(loop)
    (record,) = state.sessions
    assert record.expiry_interval == 300.0 and record.deadline is None
    assert record.attrs == {"owner": "user:keeper"}  # plain attributes are kept generically
    ((full_filter, subscription),) = record.subscriptions
    assert (full_filter, subscription.topic_filter, subscription.qos, subscription.share_group,
            subscription.sub_ids, subscription.retain_as_published, subscription.retain_handling) == \
        ("$share/g/a/+", "a/+", 2, "g", (9,), True, 1)
    released, queued = record.outbound
    assert released[0] == first and released[1] is None and released[5] == 17  # only the packet id matters
    assert queued[0] == second and queued[5] is None and queued[3] is True
    assert queued[1].properties == {"user_property": [("k", "v")], "correlation_data": b"\x01"}
    assert 95 < queued[1].expires_at - loop.time() <= 100
    assert record.awaiting_rel == [5]
    assert [m.payload for m in state.retained] == [b"kept"]
    ((client_id, delay, will),) = state.wills
    assert client_id == "keeper" and 25 < delay <= 30 and will.payload == b"bye"
    await again.close()


async def test_a_failed_commit_fails_its_waiters_and_the_next_one_succeeds(tmp_path):
    store = _store(tmp_path)
    await store.open(asyncio.get_running_loop())
    store.put_retained(Message("r", b"1", 1, True))
    store._ops.append(("INSERT INTO no_such_table VALUES (1)", ()))  # a commit that cannot succeed
    failed = store.when_durable("x")
    with pytest.raises(StoreError, match=str(tmp_path / "wharf.db")):
        await failed
    assert store.metrics.commit_errors.labels().value == 1
    store.put_retained(Message("r", b"2", 1, True))
    assert await store.when_durable("ok") == "ok"
    await store.close()


async def test_a_data_directory_is_locked_by_one_store(tmp_path):
    loop = asyncio.get_running_loop()
    store = _store(tmp_path)
    await store.open(loop)
    other = _store(tmp_path)
    with pytest.raises(StoreError, match="in use by another broker process"):
        await other.open(loop)
    await store.close()


async def test_an_unusable_data_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = _store(blocker / "data")
    with pytest.raises(StoreError, match=f"durable_storage.data_dir {blocker / 'data'}: cannot create it"):
        await store.open(asyncio.get_running_loop())


def test_config_keys_and_the_cluster_refusal():
    config = load_string('durable_storage { enable = true, data_dir = "/var/lib/wharf", synchronous = normal }')
    assert config.durable_storage == DurableStorage(True, "/var/lib/wharf", "normal")
    assert BrokerConfig().durable_storage.enable is False
    with pytest.raises(ConfigError, match="durable_storage.enable"):
        load_string("durable_storage.enable = true\ncluster.enable = true")
    with pytest.raises(ConfigError, match="durable_storage.synchronous"):
        load_string("durable_storage.synchronous = off")


def test_the_default_data_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("WHARF_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "data"
    monkeypatch.delenv("WHARF_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_data_dir() == tmp_path / "state" / "wharf" / "data"
    monkeypatch.setenv("WHARF_HOME", str(tmp_path / "home"))
    assert resolve_data_dir("${WHARF_STATE_DIR}/elsewhere") == tmp_path / "home" / "elsewhere"


def test_the_embedded_default_keeps_state_and_the_environment_can_move_or_stop_it(monkeypatch, tmp_path):
    from wharf_broker.config.loader import embedded_default
    from wharf_broker.tls import localpki
    monkeypatch.setenv("WHARF_HOME", str(tmp_path / "home"))  # the embedded default's generated certificates
    localpki.ensure()
    monkeypatch.delenv("WHARF_DATA_DIR", raising=False)
    monkeypatch.delenv("WHARF_DURABLE_STORAGE", raising=False)
    assert embedded_default().durable_storage == DurableStorage(enable=True)
    monkeypatch.setenv("WHARF_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("WHARF_DURABLE_STORAGE", "false")
    assert embedded_default().durable_storage == DurableStorage(enable=False, data_dir=str(tmp_path / "state"))


async def test_a_qos1_message_whose_deliveries_ended_before_the_commit_is_released_without_it(tmp_path):
    """``when_durable(value, since)``: a PUBLISH whose only changes were deliveries is released as soon as every
    one of them ended (its subscribers acknowledged it), commit or not; nothing of it is written. Any other
    change (a retained message here) and a delivery still open keep the waiter on the commit."""
    store = _store(tmp_path)
    await store.open(asyncio.get_running_loop())
    a, b = _session("a"), _session("b")
    store.put_session(a, 60.0, None)
    store.put_session(b, 60.0, None)
    await store.when_durable(None)
    commits = store.metrics.commits.labels().value

    transactions: list = []  # batches handed to the writer thread
    commit = store._commit
    store._commit = lambda ops: transactions.append(ops) or commit(ops)
    since = store.position()
    message = Message("t", b"both", 1)
    seq_a = store.queued(a, message, 1, False, ())
    seq_b = store.queued(b, message, 1, False, ())
    store.sent(a, seq_a, 1)
    both = store.when_durable(2, since)
    store.done(a, seq_a)
    assert not both.done()  # b has not acknowledged yet
    store.done(b, seq_b)
    assert both.done() and both.result() == 2  # released before any commit ran
    for _ in range(3):  # the batch goes to _flush: everything in it cancelled out, so no transaction
        await asyncio.sleep(0)
    assert store.status()["queued_changes"] == 0
    assert await store.when_durable("empty") == "empty"
    assert transactions == [] and store.metrics.commits.labels().value == commits

    since = store.position()
    retained = Message("r", b"kept", 1, True)
    store.put_retained(retained)
    seq = store.queued(a, retained, 1, False, ())
    waits = store.when_durable(1, since)
    store.done(a, seq)
    assert not waits.done()  # the retained message must be on disk first
    assert await waits == 1

    since = store.position()
    seq = store.queued(b, Message("t", b"open", 1), 1, False, ())
    later = store.when_durable(1, since)
    assert not later.done()
    assert await later == 1  # never acknowledged: the commit releases it, with the row on disk
    assert store._watch == {}
    store.done(b, seq)  # acknowledged after its commit: the row is deleted, the waiter is not resolved twice
    await store.when_durable(None)
    await store.close()

    again = _store(tmp_path)
    state = await again.open(asyncio.get_running_loop())
    assert {record.client_id: len(record.outbound) for record in state.sessions} == {"a": 0, "b": 0}
    assert [m.payload for m in state.retained] == [b"kept"]
    await again.close()
