"""Where an idle connection's memory goes: the broker run in this process under ``tracemalloc``, N idle plain
MQTT 3.1.1 connections opened by a ``bench.holder`` child, and the allocations they added, per source line and
per kind (transport, protocol, channel, session, parser, timers, registries), divided by N.

    PYTHONPATH=... python -m bench.conn_memory [--connections 2000] [--keepalive 60] [--frames 1] [--top 25]

The broker runs on the event loop it runs on in production (uvloop when installed): uvloop allocates its
handles with ``PyMem_RawMalloc``, which ``tracemalloc`` sees too. What it does not see is the kernel's share
(socket buffers: ``docs/scale.md``) and the allocator's own overhead (the RSS figure of ``python -m bench``
includes it). Object counts per type come from the garbage collector.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import subprocess
import sys
import time
import tracemalloc

from bench.net import HOST

CONFIG = f"""
node.event_loop = @LOOP@
log.level = warning
listeners.tcp.default {{ bind = "{HOST}:0" }}
listeners.ssl.default {{ enable = false }}
listeners.ws.default {{ enable = false }}
listeners.wss.default {{ enable = false }}
dashboard.enable = false
"""

LOOP = ["auto"]  # node.event_loop of the broker measured (--loop)

# Source files -> the part of a connection they stand for (the first frame inside the broker decides).
KINDS = (
    # Allocations made by the event loop's C code show the loop's Python caller as their site.
    ("runners.py", "transport (event loop: transport object, libuv handle)"),
    ("uvloop", "transport (event loop: transport object, libuv handle)"),
    ("weakref.py", "transport (the event loop's weak map of transports)"),
    ("asyncio/", "transport / timers (asyncio)"),
    ("listener_slots.py", "listener slot holder"),
    ("connection.py", "connection (protocol, timers)"),
    ("channel.py", "channel (MQTT state)"),
    ("session.py", "session"),
    ("inflight.py", "session (in-flight window)"),
    ("mqueue.py", "session (queue)"),
    ("frame.py", "parser / packets"),
    ("properties.py", "parser / packets"),
    ("packets.py", "parser / packets"),
    ("broker.py", "session object, broker registries (dicts, sets)"),
    ("tenancy.py", "channel (session owner)"),
    ("sys_topics.py", "$SYS client events (router topic cache)"),
    ("keepalive.py", "keep-alive wheel"),
)


def kind_of(filename: str) -> str:
    for needle, kind in KINDS:
        if needle in filename:
            return kind
    return "other: " + filename.rsplit("/", 2)[-1]


def _object_counts() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(obj).__qualname__ for obj in gc.get_objects())


async def measure(connections: int, keepalive: int, frames: int, top: int) -> None:
    from wharf_broker.app import BrokerApp
    from wharf_broker.config.loader import load_string

    app = BrokerApp(load_string(CONFIG.replace("@LOOP@", LOOP[0])))
    await app.start()
    try:
        port = int(app.listeners["tcp:default"].bind.rsplit(":", 1)[1])
        # A warm-up batch first, kept open: it brings the lazily built parts into being.
        warm = _holder(port, 50, keepalive)
        await _ready(warm)
        await asyncio.sleep(0.5)
        gc.collect()
        objects_before = _object_counts()
        before = tracemalloc.take_snapshot()
        holder = _holder(port, connections, keepalive)
        opened = await _ready(holder)
        await asyncio.sleep(1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        objects_after = _object_counts()
        _report(before, after, objects_before, objects_after, opened, frames, top)
        for child in (holder, warm):
            assert child.stdin is not None
            child.stdin.close()
            child.wait(15)
    finally:
        await app.stop()


def _holder(port: int, count: int, keepalive: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.holder", "--port", str(port), "--connections", str(count),
                             "--keepalive", str(keepalive), "--hold", "120"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def _ready(child: subprocess.Popen) -> int:
    assert child.stdout is not None
    line = await asyncio.to_thread(child.stdout.readline)
    parts = line.split()
    if len(parts) != 3 or parts[0] != "ready" or parts[2] != "0":
        raise SystemExit(f"the holder did not open its connections: {line!r}")
    return int(parts[1])


def _report(before, after, objects_before, objects_after, count: int, frames: int, top: int) -> None:
    stats = after.compare_to(before, "traceback")
    by_kind: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    for stat in stats:
        if stat.size_diff <= 0:
            continue
        # Most recent frame first: the allocation site, then its callers.
        recent = list(reversed(stat.traceback))
        ours = [frame for frame in recent if "wharf_broker" in frame.filename or "/broker/" in frame.filename]
        by_kind[kind_of((ours or recent)[0].filename)] += stat.size_diff
        where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in recent[:frames])
        by_line[where] += stat.size_diff
    total = sum(stat.size_diff for stat in stats)
    print(f"{count} idle connections: {total / count:.0f} bytes each traced by tracemalloc (net)\n")
    print("| part | bytes per connection |\n| --- | --- |")
    for kind, size in by_kind.most_common():
        if size / count >= 1:
            print(f"| {kind} | {size / count:.0f} |")
    print(f"\nTop {top} allocation sites (bytes per connection):")
    for where, size in by_line.most_common(top):
        print(f"  {size / count:8.1f}  {where}")
    print("\nObjects per connection (types with at least 0.5 more per connection):")
    for name, number in sorted(((n, objects_after[n] - objects_before.get(n, 0)) for n in objects_after),
                               key=lambda item: -item[1]):
        if number / count >= 0.5:
            print(f"  {number / count:5.2f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--keepalive", type=int, default=60, help="the clients' keep-alive (0: none)")
    parser.add_argument("--frames", type=int, default=1, help="frames per allocation site")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="the broker's node.event_loop (default: uvloop when installed, as in production)")
    args = parser.parse_args(argv)
    LOOP[0] = args.loop
    tracemalloc.start(max(args.frames, 8))
    from wharf_broker.app import loop_factory

    started = time.monotonic()
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(measure(args.connections, args.keepalive, args.frames, args.top))
    print(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
