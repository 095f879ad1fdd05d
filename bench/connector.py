"""Connect-rate client: one process opening MQTT connections back to back and closing them.

Each connection is a new TCP connection, a TLS 1.3 handshake (when a CA is given), CONNECT, CONNACK and
DISCONNECT. Blocking sockets and pre-built packet bytes keep the Python part of a connection small next to
the handshake, which is OpenSSL's work on both sides. Prints one JSON line: ok, errors, first_error, elapsed.

    python -m bench.connector --port P --count N --deadline SECONDS [--cafile CA [--cert C --key K]]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import time

from bench import mqtt_wire

HOST = "127.0.0.1"


def _read_exactly(sock: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise ConnectionError("connection closed before CONNACK")
        data += chunk
    return data


def one_connection(port: int, ctx: ssl.SSLContext | None, connect: bytes) -> None:
    raw = socket.create_connection((HOST, port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=HOST) if ctx else raw
    try:
        sock.sendall(connect)
        mqtt_wire.check_connack(_read_exactly(sock, mqtt_wire.CONNACK_LENGTH))
        sock.sendall(mqtt_wire.DISCONNECT)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="connections to make")
    parser.add_argument("--deadline", type=float, required=True, help="stop after this many seconds anyway")
    parser.add_argument("--cafile")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    ctx = None
    if args.cafile:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    connect = mqtt_wire.connect_packet(f"bench-conn-{os.getpid()}")
    ok = errors = 0
    first_error = ""
    start = time.monotonic()
    stop_at = start + args.deadline
    for _ in range(args.count):
        if time.monotonic() > stop_at:
            break
        try:
            one_connection(args.port, ctx, connect)
            ok += 1
        except (OSError, mqtt_wire.ProtocolError) as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - start
    json.dump({"ok": ok, "errors": errors, "first_error": first_error, "elapsed": elapsed}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
