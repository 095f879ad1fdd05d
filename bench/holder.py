"""Idle-connection holder: opens N MQTT connections (CONNECT/CONNACK, keep-alive 0 unless asked) and keeps them open.

Prints ``ready OK ERRORS`` once every connection is up (or failed), then holds them until its standard input
closes or ``--hold`` seconds pass, and closes them all.

    python -m bench.holder --port P --connections N [--cafile CA [--cert C --key K]] [--hold SECONDS]
                           [--keepalive SECONDS] [--source-address 127.0.0.X]

With a keep-alive the holder sends PINGREQ every keep-alive seconds on every connection (as a real device does),
so the broker sees the traffic that keeps an idle connection open.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys

from bench import mqtt_wire

HOST = "127.0.0.1"


async def _open(port: int, ctx: ssl.SSLContext | None, index: int, limit: asyncio.Semaphore, keepalive: int,
                source: str | None):
    async with limit:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=HOST if ctx else None,
                                    local_addr=(source, 0) if source else None), 30)
        # Client ids unique across holder processes: a duplicate id would take the other connection over.
        writer.write(mqtt_wire.connect_packet(f"bench-idle-{os.getpid()}-{index}", keepalive))
        mqtt_wire.check_connack(await asyncio.wait_for(reader.readexactly(mqtt_wire.CONNACK_LENGTH), 30))
        return reader, writer


async def _ping(pairs: list, keepalive: int) -> None:
    """PINGREQ on every connection once per ``keepalive`` seconds, spread evenly over the interval, so that the
    broker keeps them all open however long the holder holds them (the 2-byte PINGRESPs stay in the readers)."""
    if not pairs:
        return
    loop = asyncio.get_running_loop()
    step = keepalive / len(pairs)
    started = loop.time()
    rounds = 0
    while True:
        for index, (_, writer) in enumerate(pairs):
            due = started + (rounds * len(pairs) + index) * step
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not writer.is_closing():
                writer.write(mqtt_wire.PINGREQ)
        rounds += 1


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


async def run(args: argparse.Namespace) -> None:
    ctx = None
    if args.cafile:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    limit = asyncio.Semaphore(args.concurrency)
    sources = args.source_address or [None]
    results = await asyncio.gather(*(_open(args.port, ctx, i, limit, args.keepalive, sources[i % len(sources)])
                                     for i in range(args.connections)), return_exceptions=True)
    pairs = [r for r in results if isinstance(r, tuple)]
    failures = [r for r in results if not isinstance(r, tuple)]
    print(f"ready {len(pairs)} {len(failures)}", flush=True)
    if failures:
        print(f"first error: {type(failures[0]).__name__}: {failures[0]}", file=sys.stderr, flush=True)
    pinger = asyncio.create_task(_ping(pairs, args.keepalive)) if args.keepalive else None
    try:
        await asyncio.wait_for(_stdin_closed(), args.hold)
    except TimeoutError:
        pass
    if pinger is not None:
        pinger.cancel()
    for _, writer in pairs:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hold", type=float, default=120.0, help="give up holding after this many seconds")
    parser.add_argument("--keepalive", type=int, default=0, help="keep-alive in the CONNECT (0: none, no pings)")
    parser.add_argument("--source-address", action="append",
                        help="local address to connect from (repeat: used in turn), e.g. 127.0.0.2")
    parser.add_argument("--cafile")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
