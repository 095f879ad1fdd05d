"""The floor of a Python TLS accept path: uvloop + the stdlib ``ssl`` module and an MQTT "broker" that does nothing.

It answers every CONNECT with a CONNACK and closes on DISCONNECT, so the broker CPU per connection it shows
under ``connect_rate`` is what the event loop and the ``ssl`` module cost before any broker code runs. Wharf's
CPU per TLS connection minus this floor is Wharf's own share; this floor minus mosquitto's is the price of
doing TLS from Python at all. Usage (the connect client and PKI as in a ``--keep`` work directory)::

    python -m bench.tls_floor --port 8883 --cert server.pem --key server.key [--cafile ca.pem]
    connect_rate 8883 3000 60 ca.pem [client.pem client.key]

and read utime + stime of the floor process from ``/proc/<pid>/stat`` before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

_CONNACK = b"\x20\x02\x00\x00"


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data[0] == 0x10:  # CONNECT
            self.transport.write(_CONNACK)
        elif data[0] == 0xE0:  # DISCONNECT
            self.transport.close()


def server_context(cert: str, key: str, cafile: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    if cafile:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(port: int, context: ssl.SSLContext) -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port, ssl=context)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--cafile", help="require client certificates signed by this CA (mutual TLS)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    context = server_context(args.cert, args.key, args.cafile)
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    try:
        asyncio.run(serve(args.port, context))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
