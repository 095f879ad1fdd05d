"""A damaged store or a full disk: the broker starts (or keeps running) with what it can read, names the file,
says what it dropped and counts it; nothing it acknowledged before the damage is lost unless the damage hit it
(a torn WAL tail only loses its own, never-completed transaction)."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import uuid

import pytest

from .durable_support import burst, drain, durable_config, metric, subscribe_offline

pytestmark = pytest.mark.slow


def _number(payload: bytes) -> int:
    return int(payload.split(b":")[1])


async def _queue_then_stop(broker, count: int, signum: int) -> dict:
    await subscribe_offline(broker.port("tcp:default"))
    acked: dict = {}
    await burst(broker.port("tcp:default"), count, acked)
    assert len(acked) == count
    broker.stop(signum)
    return acked


def _no_garbage_no_duplicates(acked: dict, received: list) -> collections.Counter:
    counts = collections.Counter(packet.payload for packet in received)
    assert set(counts) <= set(acked), "delivered something nobody published"
    assert not [p for p, n in counts.items() if n > 1 and p.startswith(b"2:")], "QoS 2 delivered twice"
    return counts


async def test_a_torn_wal_tail_loses_only_the_last_transaction(broker_process, tmp_path):
    data = tmp_path / "data"
    config = durable_config(data)
    acked = await _queue_then_stop(broker_process(config), 600, signal.SIGKILL)
    wal = data / "wharf.db-wal"
    size = wal.stat().st_size
    assert size > 4096
    with open(wal, "r+b") as file:
        file.truncate(size - 1000)  # the last frame torn in half

    restarted = broker_process(config)
    counts = _no_garbage_no_duplicates(acked, await drain(restarted.port("tcp:default")))
    assert counts, "everything before the torn transaction is kept"
    missing = [_number(p) for p in acked if p not in counts]
    if missing:  # what went is a tail: the torn transaction and nothing before it
        assert min(missing) > max(_number(p) for p in counts)


@pytest.mark.parametrize("damage", ["garbage_header", "truncated_file"])
async def test_a_damaged_database_file_is_set_aside_and_what_can_be_read_is_kept(broker_process, tmp_path, damage):
    data = tmp_path / "data"
    config = durable_config(data)
    acked = await _queue_then_stop(broker_process(config), 400, signal.SIGTERM)  # SIGTERM: all in wharf.db
    db = data / "wharf.db"
    with open(db, "r+b") as file:
        if damage == "garbage_header":
            file.write(os.urandom(100))
        else:
            file.truncate(db.stat().st_size // 2)

    restarted = broker_process(config)
    log = restarted.log
    assert f"durable store {db} is damaged" in log
    aside = [path.name for path in data.iterdir() if path.name.startswith("wharf.db.corrupt-")]
    assert aside, list(data.iterdir())
    assert metric(restarted, "wharf_store_recovery_dropped_total") >= 1
    port = restarted.port("tcp:default")
    if damage == "truncated_file" and "1 sessions" in log:
        _no_garbage_no_duplicates(acked, await drain(port))
    # The broker is fully usable afterwards: a new durable session keeps what it is sent across a restart.
    await subscribe_offline(port, "after/#", client_id="after-damage")
    more: dict = {}
    await burst(port, 20, more, topic="after/x")
    assert len(more) == 20
    restarted.stop(signal.SIGKILL)
    again = broker_process(config)
    received = await drain(again.port("tcp:default"), "after-damage")
    assert {p.payload for p in received} == set(more)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (we run as root), unmounted however the test ends."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    mountpoint = tmp_path / f"small-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


async def test_a_full_disk_refuses_new_messages_and_keeps_the_acknowledged_ones(broker_process, small_disk):
    data = small_disk / "data"
    config = durable_config(data)
    broker = broker_process(config)
    port = broker.port("tcp:default")
    await subscribe_offline(port)
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    with open(filler, "wb") as file:
        file.write(b"\0" * (free - 700 * 1024))

    acked: dict = {}
    refused: list = []
    await burst(port, 1500, acked, payload_size=2000, window=20, refused=refused)
    assert refused, "the disk never filled up"
    assert acked, "nothing fitted before the disk was full"
    assert broker.running()
    assert metric(broker, "wharf_store_commit_errors_total") >= 1
    assert "commit failed" in broker.log and str(data / "wharf.db") in broker.log

    filler.unlink()  # space again: commits succeed again
    more: dict = {}
    await burst(port, 10, more, topic="burst/after")
    assert len(more) == 10
    acked.update(more)
    broker.stop(signal.SIGKILL)

    restarted = broker_process(config)
    received = await drain(restarted.port("tcp:default"))
    counts = _no_garbage_no_duplicates({**acked, **{p: 0 for p in refused}}, received)
    missing = [p for p in acked if p not in counts]
    assert not missing, f"{len(missing)} acknowledged messages lost"


async def test_a_store_that_cannot_be_written_stops_the_start_with_its_name_and_changes_nothing(broker_process,
                                                                                                 small_disk):
    """Wrong permissions (here: the file system turned read-only, which binds root too): the broker refuses to
    start, says which file and why, and the state is intact once the volume is writable again."""
    data = small_disk / "data"
    config = durable_config(data)
    broker = broker_process(config)
    await subscribe_offline(broker.port("tcp:default"))
    acked: dict = {}
    await burst(broker.port("tcp:default"), 50, acked)
    assert broker.stop(signal.SIGTERM) == 0
    before = (data / "wharf.db").read_bytes()

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        with pytest.raises(AssertionError, match=rf"{data / 'wharf.lock'}: Read-only file system"):
            broker_process(config)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert (data / "wharf.db").read_bytes() == before

    restarted = broker_process(config)
    received = await drain(restarted.port("tcp:default"))
    assert {p.payload for p in received} == set(acked)
