"""Helpers for the TLS tests: a PKI minted at test time, an echo listener, real TLS clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import warnings
from pathlib import Path

from wharf_broker.config.model import CrlCache, PskAuthentication, SslOptions
from wharf_broker.metrics import Registry
from wharf_broker.tls import TlsListenerRuntime, peer_identity
from wharf_broker.tls.devpki import CertificateAuthority


class Pki:
    """Everything the tests need, written to ``root`` (a temp dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority("Test Root CA")
        self.other_ca = CertificateAuthority("Untrusted CA")
        self.new_ca = CertificateAuthority("Rotated Root CA")
        self.server = self.ca.issue("server-v1", server=True, sans=["localhost", "127.0.0.1"])
        self.client = self.ca.issue("client-good", client=True)
        self.write("ca.pem", self.ca.cert_pem)
        self.write("server.pem", self.server.cert_pem())
        self.write("server.key", self.server.key_pem())
        self.write("client.pem", self.client.cert_pem())
        self.write("client.key", self.client.key_pem())

    def write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def issued_files(self, prefix: str, issued, with_chain: bool = False) -> tuple[str, str]:
        return (self.write(f"{prefix}.pem", issued.cert_pem(with_chain=with_chain)),
                self.write(f"{prefix}.key", issued.key_pem()))


def private_copy(pki: Pki, directory: Path) -> Pki:
    """The same PKI with its files copied to ``directory`` (tests that rewrite them must not disturb others)."""
    per_test = Pki.__new__(Pki)
    per_test.__dict__.update(pki.__dict__)
    per_test.root = directory
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"):
        (directory / name).write_bytes((pki.root / name).read_bytes())
    return per_test


def options(pki: Pki, **overrides) -> SslOptions:
    base = dict(certfile=pki.path("server.pem"), keyfile=pki.path("server.key"), cacertfile=pki.path("ca.pem"))
    base.update(overrides)
    return SslOptions(**base)


class Echo(asyncio.Protocol):
    """Answers every chunk with ``<chunk>|<cn or ->|<psk identity or ->``."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        identity = peer_identity(transport)
        self.tag = b"|%s|%s" % ((identity.cn or "-").encode(), (identity.psk_identity or "-").encode())

    def data_received(self, data: bytes) -> None:
        self.transport.write(data + self.tag)


@contextlib.asynccontextmanager
async def serving(opts: SslOptions, *, psk: PskAuthentication | None = None, crl: CrlCache | None = None,
                  backend: str = "auto", protocol=Echo, registry: Registry | None = None):
    runtime = TlsListenerRuntime("ssl:test", opts, psk=psk, crl_cache=crl, registry=registry or Registry(),
                                 backend=backend)
    await runtime.start()
    server = await runtime.create_server(protocol, "127.0.0.1", 0)
    runtime.port = server.sockets[0].getsockname()[1]
    try:
        yield runtime
    finally:
        await runtime.stop()


def client_context(pki: Pki | None = None, cert: tuple[str, str] | None = None, *, verify: bool = True,
                   min_version=None, max_version=None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify and pki is not None:
        ctx.load_verify_locations(pki.path("ca.pem"))
    else:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 clients on purpose
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


@dataclasses.dataclass
class Exchange:
    ok: bool
    reply: bytes = b""
    error: str = ""
    fingerprint: str = ""
    cipher: tuple | None = None
    version: str = ""


async def exchange(port: int, ctx: ssl.SSLContext, payload: bytes = b"ping", timeout: float = 10.0) -> Exchange:
    """Connect, send ``payload``, read the echo. ``ok`` only if the server answered over TLS."""
    import hashlib

    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), timeout)
        sslobj = writer.get_extra_info("ssl_object")
        fingerprint = hashlib.sha256(sslobj.getpeercert(binary_form=True)).hexdigest()
        writer.write(payload)
        reply = await asyncio.wait_for(reader.read(4096), timeout)
        if not reply.startswith(payload):
            return Exchange(False, reply, "no echo (connection closed)", fingerprint)
        return Exchange(True, reply, "", fingerprint, writer.get_extra_info("cipher"), sslobj.version())
    except (ssl.SSLError, ConnectionError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
        return Exchange(False, b"", f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def failures(runtime: TlsListenerRuntime) -> dict[str, float]:
    return {labels["reason"]: value for labels, value in runtime.metrics.failures.samples()
            if labels["listener"] == runtime.listener_id}






def s_client(port: int, *args: str, data: bytes = b"ping", expect: bytes = b"ping|", limit: float = 15.0) -> bytes:
    """Run ``openssl s_client``, send ``data``, and return its output once ``expect`` shows up (or it exits)."""
    import subprocess
    import time

    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.set_blocking(proc.stdout.fileno(), False)
    output = b""
    deadline = time.monotonic() + limit
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
        while time.monotonic() < deadline:
            chunk = proc.stdout.read()
            if chunk:
                output += chunk
            if expect in output or proc.poll() is not None:
                break
            time.sleep(0.05)
        output += proc.stdout.read() or b""
    except BrokenPipeError:
        pass
    finally:
        proc.kill()
        proc.wait()
    return output


@contextlib.asynccontextmanager
async def http_server(handlers: dict):
    """A local aiohttp server on 127.0.0.1 (ephemeral port); yields its base URL. ``handlers``: path -> handler."""
    from aiohttp import web

    app = web.Application()
    for path, handler in handlers.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def tls_roundtrip(port: int, ctx: ssl.SSLContext, session=None) -> tuple[bytes, object, bool]:
    """A blocking connection offering ``session``; returns (reply, new session, whether it was resumed)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"ping")
            reply = tls.recv(100)  # also lets TLS 1.3 tickets arrive
            return reply, tls.session, tls.session_reused
