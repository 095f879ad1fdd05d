"""OCSP stapling: a local aiohttp OCSP responder built with cryptography; ``openssl s_client -status`` reads it."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from wharf_broker.config.model import OcspOptions
from wharf_broker.tls.devpki import CertificateAuthority
from wharf_tls_helpers import client_context, exchange, http_server, options, s_client, serving

from tests.support import eventually


class Responder:
    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.certs = {}
        self.revoked: set[int] = set()
        self.requests = 0
        self.signer = ca  # another CA makes responses the broker must refuse

    def know(self, cert) -> None:
        self.certs[cert.serial_number] = cert

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        req = ocsp.load_der_ocsp_request(await request.read())
        cert = self.certs[req.serial_number]
        now = dt.datetime.now(dt.timezone.utc)
        revoked = cert.serial_number in self.revoked
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert, issuer=self.ca.cert, algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=now - dt.timedelta(minutes=1), next_update=now + dt.timedelta(hours=1),
            revocation_time=now - dt.timedelta(minutes=1) if revoked else None, revocation_reason=None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.signer.cert)
        body = builder.sign(self.signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        return web.Response(body=body, content_type="application/ocsp-response")


def stapled_status(port: int) -> bytes:
    return s_client(port, "-status", expect=b"ping|")


@pytest.fixture
def ocsp_setup(files):
    responder = Responder(files.ca)
    responder.know(files.server.cert)
    return responder


def ocsp_options(files, url: str, refresh: float = 300.0):
    return options(files, reload_interval=3600, ocsp=OcspOptions(
        enable_ocsp_stapling=True, responder_url=url, issuer_pem=files.path("ca.pem"), refresh_interval=refresh,
        refresh_http_timeout=5))


@pytest.mark.uvloop_too
async def test_staple_is_served_refreshed_and_follows_reloads(files, ocsp_setup):
    responder = ocsp_setup
    async with http_server({"/ocsp": responder.handle}) as base:
        async with serving(ocsp_options(files, f"{base}/ocsp", refresh=0.5)) as rt:
            assert rt.backend == "pyopenssl"
            assert await eventually(lambda: rt.status()["ocsp"]["staple_status"] == "good")
            out = await asyncio.to_thread(stapled_status, rt.port)
            assert b"OCSP Response Status: successful" in out and b"Cert Status: good" in out, out
            assert b"ping|-|-" in out
            # A client that does not ask for a staple is served as usual.
            assert (await exchange(rt.port, client_context(files))).ok
            # The background refresh replaces the staple: the responder now says revoked.
            responder.revoked.add(files.server.cert.serial_number)
            assert await eventually(lambda: rt.status()["ocsp"]["staple_status"] == "revoked", timeout=20)
            out = await asyncio.to_thread(stapled_status, rt.port)
            assert b"Cert Status: revoked" in out, out
            # A reloaded certificate gets its own staple.
            rotated = files.ca.issue("server-ocsp-v2", server=True, sans=["localhost"])
            responder.know(rotated.cert)
            files.write("server.pem", rotated.cert_pem())
            files.write("server.key", rotated.key_pem())
            assert (await rt.reload()).reloaded
            assert await eventually(lambda: rt.status()["ocsp"]["staple_status"] == "good", timeout=20)
            out = await asyncio.to_thread(stapled_status, rt.port)
            assert b"Cert Status: good" in out and format(rotated.cert.serial_number, "X").encode() in out, out


async def test_unverifiable_or_missing_responses_are_not_stapled(files, ocsp_setup):
    responder = ocsp_setup
    responder.signer = CertificateAuthority("Impostor")
    async with http_server({"/ocsp": responder.handle}) as base:
        async with serving(ocsp_options(files, f"{base}/ocsp")) as rt:
            assert await eventually(lambda: rt.status()["ocsp"]["last_error"])
            assert "signature" in rt.status()["ocsp"]["last_error"]
            out = await asyncio.to_thread(stapled_status, rt.port)
            assert b"OCSP response: no response sent" in out and b"ping|-|-" in out, out
    async with serving(ocsp_options(files, "http://127.0.0.1:9/ocsp")) as rt:  # nothing listens on port 9
        assert await eventually(lambda: rt.status()["ocsp"]["last_error"])
        assert (await exchange(rt.port, client_context(files))).ok


async def test_ocsp_options_are_validated(files):
    from wharf_broker.tls import TlsConfigError

    with pytest.raises(TlsConfigError, match="responder_url"):
        async with serving(options(files, ocsp=OcspOptions(enable_ocsp_stapling=True, issuer_pem="x"))):
            pass
    wrong_issuer = files.write("other-ca.pem", files.other_ca.cert_pem)
    with pytest.raises(TlsConfigError, match="not the issuer"):
        async with serving(options(files, ocsp=OcspOptions(enable_ocsp_stapling=True, issuer_pem=wrong_issuer,
                                                           responder_url="http://127.0.0.1:9/"))):
            pass
