"""CRL checking: local crlfile, distribution points fetched over HTTP (a local aiohttp CRL server), fail closed."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from wharf_broker.config.model import CrlCache
from wharf_broker.tls.devpki import CertificateAuthority
from wharf_tls_helpers import client_context, exchange, failures, http_server, options, serving, tls_roundtrip

from tests.support import eventually

BACKENDS = ["stdlib", "pyopenssl"]


@pytest.fixture
def crl_ca():
    return CertificateAuthority("CRL Test CA")


def crl_options(files, crl_ca, **extra):
    bundle = files.write("crl-bundle.pem", files.ca.cert_pem + crl_ca.cert_pem)
    return options(files, cacertfile=bundle, verify="verify_peer", fail_if_no_peer_cert=True,
                   enable_crl_check=True, reload_interval=3600, **extra)


def client_files(files, crl_ca, name, **issue):
    return files.issued_files(name, crl_ca.issue(name, client=True, **issue))


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", BACKENDS)
async def test_local_crlfile_refuses_revoked_clients(files, crl_ca, backend):
    good = client_files(files, crl_ca, "dev-good")
    revoked_issued = crl_ca.issue("dev-revoked", client=True)
    revoked = files.issued_files("dev-revoked", revoked_issued)
    crl_ca.revoke(revoked_issued.cert)
    # A CRL per CA: with CRL checking on, a CA without one fails everybody it issued (fail closed).
    crlfile = files.write("crl.pem", crl_ca.crl_pem() + files.ca.crl_pem())
    async with serving(crl_options(files, crl_ca, crlfile=crlfile), backend=backend) as rt:
        assert (await exchange(rt.port, client_context(files, good))).reply == b"ping|dev-good|-"
        assert not (await exchange(rt.port, client_context(files, revoked))).ok
        assert await eventually(lambda: failures(rt).get("certificate_revoked")), failures(rt)


async def test_crl_check_without_any_crl_fails_closed(files, crl_ca):
    good = client_files(files, crl_ca, "dev-no-crl")
    async with serving(crl_options(files, crl_ca)) as rt:
        assert not (await exchange(rt.port, client_context(files, good))).ok
        assert await eventually(lambda: failures(rt).get("crl_unavailable")), failures(rt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
async def test_reloaded_crl_is_not_bypassed_by_session_resumption(files, crl_ca, backend, tls):
    issued = crl_ca.issue("dev-later-revoked", client=True)
    cert = files.issued_files("dev-later", issued)
    crlfile = files.write("crl.pem", crl_ca.crl_pem() + files.ca.crl_pem())
    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    async with serving(crl_options(files, crl_ca, crlfile=crlfile), backend=backend) as rt:
        ctx = client_context(files, cert, max_version=version)
        reply, session, _ = await asyncio.to_thread(tls_roundtrip, rt.port, ctx, None)
        assert reply == b"ping|dev-later-revoked|-"
        reply, session, reused = await asyncio.to_thread(tls_roundtrip, rt.port, ctx, session)
        assert reused and reply.startswith(b"ping"), "precondition: sessions resume before the CRL changes"
        crl_ca.revoke(issued.cert)
        files.write("crl.pem", crl_ca.crl_pem() + files.ca.crl_pem())
        assert (await rt.reload()).reloaded
        try:
            reply, _, _ = await asyncio.to_thread(tls_roundtrip, rt.port, ctx, session)
        except (ssl.SSLError, OSError):
            reply = b""
        assert reply == b""
        assert not (await exchange(rt.port, ctx)).ok


class CrlServer:
    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.hits = 0
        self.down = False

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503)
        self.hits += 1
        return web.Response(body=self.ca.crl().public_bytes(Encoding.DER), content_type="application/pkix-crl")


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", BACKENDS)
async def test_distribution_point_crls_are_fetched_cached_and_refreshed(files, crl_ca, backend):
    server = CrlServer(crl_ca)
    async with http_server({"/ca.crl": server.handle}) as base:
        url = f"{base}/ca.crl"
        good = client_files(files, crl_ca, "dev-cdp-good", crl_urls=[url])
        later_issued = crl_ca.issue("dev-cdp-later", client=True, crl_urls=[url])
        later = files.issued_files("dev-cdp-later", later_issued)
        revoked_issued = crl_ca.issue("dev-cdp-revoked", client=True, crl_urls=[url])
        revoked = files.issued_files("dev-cdp-revoked", revoked_issued)
        crl_ca.revoke(revoked_issued.cert)
        no_cdp = client_files(files, crl_ca, "dev-no-cdp")
        cache = CrlCache(refresh_interval=0.3, http_timeout=5)
        async with serving(crl_options(files, crl_ca), crl=cache, backend=backend) as rt:
            assert (await exchange(rt.port, client_context(files, good))).reply == b"ping|dev-cdp-good|-"
            assert (await exchange(rt.port, client_context(files, later))).ok
            assert not (await exchange(rt.port, client_context(files, revoked))).ok
            assert failures(rt).get("crl_revoked") == 1
            # No distribution point and no crlfile: nothing proves the certificate good.
            assert not (await exchange(rt.port, client_context(files, no_cdp))).ok
            assert failures(rt).get("crl_unavailable") == 1
            assert server.hits >= 1
            # The background refresh picks up a new revocation.
            crl_ca.revoke(later_issued.cert)
            assert await eventually(lambda: server.hits >= 3, timeout=20)
            assert not (await exchange(rt.port, client_context(files, later))).ok
            assert "distribution_points" in rt.status()["crl"]


async def test_unreachable_distribution_point_fails_closed(files, crl_ca):
    server = CrlServer(crl_ca)
    server.down = True
    async with http_server({"/ca.crl": server.handle}) as base:
        cert = client_files(files, crl_ca, "dev-cdp-down", crl_urls=[f"{base}/ca.crl"])
        async with serving(crl_options(files, crl_ca), crl=CrlCache(refresh_interval=60, http_timeout=5)) as rt:
            assert not (await exchange(rt.port, client_context(files, cert))).ok
            assert failures(rt).get("crl_unavailable") == 1
            server.down = False
            assert (await exchange(rt.port, client_context(files, cert))).ok


@pytest.mark.parametrize("backend", BACKENDS)
async def test_open_connections_of_newly_revoked_certificates_are_closed(files, crl_ca, backend):
    doomed_issued = crl_ca.issue("dev-doomed", client=True)
    doomed = files.issued_files("dev-doomed", doomed_issued)
    fine = client_files(files, crl_ca, "dev-fine")
    crlfile = files.write("crl.pem", crl_ca.crl_pem() + files.ca.crl_pem())
    async with serving(crl_options(files, crl_ca, crlfile=crlfile), backend=backend) as rt:
        streams = {}
        for name, cert in (("doomed", doomed), ("fine", fine)):
            reader, writer = await asyncio.open_connection("127.0.0.1", rt.port, ssl=client_context(files, cert),
                                                           server_hostname="localhost")
            writer.write(b"hello")
            expected = b"hello|dev-%s|-" % name.encode()
            assert (await reader.readexactly(len(expected))) == expected
            streams[name] = (reader, writer)
        crl_ca.revoke(doomed_issued.cert)
        files.write("crl.pem", crl_ca.crl_pem() + files.ca.crl_pem())
        assert (await rt.reload()).reloaded
        reader, writer = streams["doomed"]
        try:
            rest = await asyncio.wait_for(reader.read(), 20)
        except (ssl.SSLError, ConnectionError):
            rest = b""
        assert rest == b""  # closed by the broker
        assert failures(rt).get("revoked_while_connected") == 1
        reader, writer = streams["fine"]
        writer.write(b"still")
        assert await reader.readexactly(len(b"still|dev-fine|-")) == b"still|dev-fine|-"
        for _, w in streams.values():
            w.close()


async def test_distribution_point_crl_is_fetched_once_and_served_from_the_cache(files, crl_ca):
    server = CrlServer(crl_ca)
    async with http_server({"/ca.crl": server.handle}) as base:
        cert = client_files(files, crl_ca, "dev-cached", crl_urls=[f"{base}/ca.crl"])
        async with serving(crl_options(files, crl_ca), crl=CrlCache(refresh_interval=600, http_timeout=5)) as rt:
            clients = [exchange(rt.port, client_context(files, cert)) for _ in range(5)]
            assert all(result.ok for result in await asyncio.gather(*clients))
            assert server.hits == 1  # five handshakes (some at the same time), one download
