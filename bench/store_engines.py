"""Which embedded store for ``durable_storage``: durable message writes per second on this disk.

``python -m bench.store_engines [--seconds 3] [--payload 64]`` writes messages (a row of ~payload bytes each)
as fast as one writer can, every write durable before it counts (fsync, or SQLite ``synchronous=FULL``):

- ``sqlite-full-each``: SQLite WAL, ``synchronous=FULL``, one transaction (one fsync) per message;
- ``sqlite-full-group``: the same with group commit: a transaction of ``--batch`` messages;
- ``sqlite-normal-group``: ``synchronous=NORMAL`` (survives SIGKILL, not a power loss), group commit;
- ``append-log-group``: a hand-written append-only file, ``write`` + ``fsync`` per batch (the floor: no index,
  no deletes, recovery and compaction left to write);
- ``lmdb-group``: LMDB (``lmdb`` binding, when installed), one synced write transaction per batch.

Each runs alone for ``--seconds``; prints a table (messages/s, commits/s).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path


def _sqlite(directory: Path, synchronous: str, batch: int, seconds: float, payload: bytes) -> tuple[int, int]:
    con = sqlite3.connect(str(directory / "bench.db"), isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute("CREATE TABLE outbound (seq INTEGER PRIMARY KEY, client_id TEXT, qos INTEGER, topic TEXT, "
                "payload BLOB)")
    seq = commits = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        con.execute("BEGIN IMMEDIATE")
        rows = [(seq + i, "client-7", 1, "bench/topic", payload) for i in range(batch)]
        con.executemany("INSERT INTO outbound VALUES (?, ?, ?, ?, ?)", rows)
        # Every message is also acknowledged by its subscriber in steady state: delete what the previous
        # batch inserted, as the broker does.
        if seq:
            con.execute("DELETE FROM outbound WHERE seq < ?", (seq,))
        con.execute("COMMIT")
        seq += batch
        commits += 1
    con.close()
    return seq, commits


def _append_log(directory: Path, batch: int, seconds: float, payload: bytes) -> tuple[int, int]:
    fd = os.open(directory / "bench.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    record = b"client-7\x00bench/topic\x00" + payload + b"\n"
    count = commits = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.write(fd, record * batch)
        os.fsync(fd)
        count += batch
        commits += 1
    os.close(fd)
    return count, commits


def _lmdb(directory: Path, batch: int, seconds: float, payload: bytes) -> tuple[int, int] | None:
    try:
        import lmdb
    except ImportError:
        return None
    env = lmdb.open(str(directory / "bench.lmdb"), map_size=1 << 30, sync=True, metasync=True)
    seq = commits = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with env.begin(write=True) as txn:
            for i in range(batch):
                txn.put((seq + i).to_bytes(8, "big"), b"client-7\x00bench/topic\x00" + payload)
            for i in range(seq - batch, seq) if seq else ():
                txn.delete(i.to_bytes(8, "big"))
        seq += batch
        commits += 1
    env.close()
    return seq, commits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args(argv)
    payload = os.urandom(args.payload)
    runs = [
        ("sqlite-full-each", lambda d: _sqlite(d, "FULL", 1, args.seconds, payload)),
        ("sqlite-full-group", lambda d: _sqlite(d, "FULL", args.batch, args.seconds, payload)),
        ("sqlite-normal-group", lambda d: _sqlite(d, "NORMAL", args.batch, args.seconds, payload)),
        ("append-log-group", lambda d: _append_log(d, args.batch, args.seconds, payload)),
        ("lmdb-group", lambda d: _lmdb(d, args.batch, args.seconds, payload)),
    ]
    print(f"{'engine':<22}{'messages/s':>12}{'commits/s':>12}   (batch {args.batch}, payload {args.payload} B)")
    for name, run in runs:
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            result = run(Path(directory))
        if result is None:
            print(f"{name:<22}{'not installed':>24}")
            continue
        count, commits = result
        print(f"{name:<22}{count / args.seconds:>12.0f}{commits / args.seconds:>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
