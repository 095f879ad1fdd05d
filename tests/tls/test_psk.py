"""PSK authentication: EMQX's identity:secret file, PSK suites, and only a PSK that was really used counts."""

from __future__ import annotations

import asyncio

import pytest

from wharf_broker.config.model import PskAuthentication
from wharf_broker.tls import TlsConfigError
from wharf_tls_helpers import client_context, exchange, options, s_client, serving

SECRET = b"8c701116e9127c57a99d5563709af3deaca75ab9f6ee2a39"  # used verbatim, as EMQX does


@pytest.fixture
def psk(files) -> PskAuthentication:
    path = files.write("init.psk", b"# EMQX format\nmyclient1:" + SECRET + b"\nmyclient2:other-secret\n")
    return PskAuthentication(enable=True, init_file=path)


def psk_client(port: int, identity: str, secret: bytes, *args: str) -> bytes:
    return s_client(port, "-psk_identity", identity, "-psk", secret.hex(), *args, expect=b"ping|")


@pytest.mark.uvloop_too
async def test_tls12_psk_suites_authenticate_the_identity(files, psk):
    async with serving(options(files, reload_interval=3600), psk=psk) as rt:
        assert rt.backend == "pyopenssl"
        for cipher in ("PSK-AES128-GCM-SHA256", "ECDHE-PSK-CHACHA20-POLY1305", "RSA-PSK-AES256-GCM-SHA384"):
            out = await asyncio.to_thread(psk_client, rt.port, "myclient1", SECRET, "-tls1_2", "-cipher",
                                          cipher + ":@SECLEVEL=0")
            if cipher.startswith("RSA-PSK"):
                # RSA-PSK needs an RSA server certificate; the test PKI's is EC, so the suite cannot be chosen.
                assert b"ping|" not in out
                continue
            assert b"ping|-|myclient1" in out, (cipher, out[-600:])
        wrong = await asyncio.to_thread(psk_client, rt.port, "myclient1", b"wrong-secret", "-tls1_2", "-cipher",
                                        "PSK-AES128-GCM-SHA256:@SECLEVEL=0")
        assert b"ping|" not in wrong
        unknown = await asyncio.to_thread(psk_client, rt.port, "nobody", SECRET, "-tls1_2", "-cipher",
                                          "PSK-AES128-GCM-SHA256:@SECLEVEL=0")
        assert b"ping|" not in unknown
        # Certificate clients share the listener.
        assert (await exchange(rt.port, client_context(files))).reply == b"ping|-|-"


@pytest.mark.uvloop_too
async def test_tls13_offered_but_unused_psk_authenticates_nobody(files, psk):
    async with serving(options(files, reload_interval=3600), psk=psk) as rt:
        # Default TLS 1.3 suites: the legacy PSK callback sees the identity, but the handshake falls back to the
        # certificate; the identity must not be reported.
        fallback = await asyncio.to_thread(psk_client, rt.port, "myclient1", SECRET, "-tls1_3")
        assert b"ping|-|-" in fallback, fallback[-600:]
        # With a SHA-256 suite the PSK is really used, and then (only then) it counts.
        used = await asyncio.to_thread(psk_client, rt.port, "myclient1", SECRET, "-tls1_3", "-ciphersuites",
                                       "TLS_AES_128_GCM_SHA256")
        assert b"ping|-|myclient1" in used, used[-600:]
        wrong = await asyncio.to_thread(psk_client, rt.port, "myclient1", b"wrong", "-tls1_3", "-ciphersuites",
                                        "TLS_AES_128_GCM_SHA256")
        assert b"ping|-|myclient1" not in wrong


async def test_tls13_only_listener_offers_no_psk(files, psk):
    async with serving(options(files, versions=["tlsv1.3"], reload_interval=3600), psk=psk) as rt:
        assert rt.backend == "stdlib"
        assert any("psk" in w for w in rt.status()["warnings"])


async def test_psk_file_errors_are_clear(files):
    bad = files.write("bad.psk", b"no-separator-here\n")
    with pytest.raises(TlsConfigError, match="line 1"):
        async with serving(options(files), psk=PskAuthentication(enable=True, init_file=bad)):
            pass
    with pytest.raises(TlsConfigError, match="init_file"):
        async with serving(options(files), psk=PskAuthentication(enable=True, init_file=files.path("none.psk"))):
            pass
