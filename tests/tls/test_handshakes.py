"""Real handshakes against a TLS listener: every verify mode and option, accept and reject paths, both backends."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from wharf_broker.tls import TlsConfigError
from wharf_broker.tls.devpki import CertificateAuthority
from wharf_tls_helpers import client_context, exchange, failures, options, s_client, serving, tls_roundtrip

from tests.support import eventually

BACKENDS = ["stdlib", "pyopenssl"]


@pytest.fixture(scope="module")
def clients(pki):
    """Client certificate files: good, untrusted CA, self-signed, expired, serverAuth-only, from the rotated CA."""
    now = dt.datetime.now(dt.timezone.utc)
    made = {
        "good": (pki.path("client.pem"), pki.path("client.key")),
        "untrusted": pki.issued_files("c-untrusted", pki.other_ca.issue("dev-untrusted", client=True)),
        "expired": pki.issued_files("c-expired", pki.ca.issue(
            "dev-expired", client=True, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))),
        "server_eku": pki.issued_files("c-server-eku", pki.ca.issue("dev-eku", eku=[ExtendedKeyUsageOID.SERVER_AUTH])),
        "rotated": pki.issued_files("c-rotated", pki.new_ca.issue("dev-rotated", client=True)),
    }
    self_signed = CertificateAuthority("dev-self-signed")
    made["self_signed"] = (pki.write("c-self.pem", self_signed.cert_pem),
                           pki.write("c-self.key", self_signed.key_pem()))
    return made


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", BACKENDS)
async def test_one_way_tls_serves_any_client(pki, clients, backend):
    async with serving(options(pki, verify="verify_none"), backend=backend) as rt:
        plain = await exchange(rt.port, client_context(pki))
        assert plain.ok, plain.error
        assert plain.reply == b"ping|-|-"
        assert plain.fingerprint == pki.server.fingerprint
        # verify_none never asks for a certificate, so even an untrusted one does not matter.
        assert (await exchange(rt.port, client_context(pki, clients["untrusted"]))).reply == b"ping|-|-"
        # A client that does not trust the server's CA refuses the server (the client's own check).
        stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        stranger.load_verify_locations(cadata=pki.other_ca.cert_pem.decode())
        assert not (await exchange(rt.port, stranger)).ok


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tls", ["1.3", "1.2"])
async def test_mutual_tls_requires_a_valid_client_certificate(pki, clients, backend, tls):
    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    async with serving(options(pki, verify="verify_peer", fail_if_no_peer_cert=True), backend=backend) as rt:
        good = await exchange(rt.port, client_context(pki, clients["good"], max_version=version))
        assert good.ok, good.error
        assert good.reply == b"ping|client-good|-"
        for name in ("untrusted", "expired", "self_signed", "server_eku"):
            result = await exchange(rt.port, client_context(pki, clients[name], max_version=version))
            assert not result.ok, name
        assert not (await exchange(rt.port, client_context(pki, max_version=version))).ok
        seen = await eventually(lambda: sum(failures(rt).values()) >= 5 and failures(rt))
        assert seen, failures(rt)
        assert seen.get("certificate_expired", 0) >= 1 and seen.get("unknown_ca", 0) >= 2, seen


@pytest.mark.parametrize("backend", BACKENDS)
async def test_verify_peer_without_fail_if_no_peer_cert_lets_certless_clients_in(pki, clients, backend):
    async with serving(options(pki, verify="verify_peer", fail_if_no_peer_cert=False), backend=backend) as rt:
        anonymous = await exchange(rt.port, client_context(pki))
        assert anonymous.ok and anonymous.reply == b"ping|-|-", anonymous.error
        assert (await exchange(rt.port, client_context(pki, clients["good"]))).reply == b"ping|client-good|-"
        for name in ("untrusted", "expired", "self_signed"):
            assert not (await exchange(rt.port, client_context(pki, clients[name]))).ok, name


async def test_cacertfile_bundle_with_old_and_new_ca(pki, clients):
    bundle = pki.write("ca-bundle.pem", pki.ca.cert_pem + pki.new_ca.cert_pem)
    opts = options(pki, cacertfile=bundle, verify="verify_peer", fail_if_no_peer_cert=True)
    async with serving(opts) as rt:
        assert (await exchange(rt.port, client_context(pki, clients["good"]))).ok
        assert (await exchange(rt.port, client_context(pki, clients["rotated"]))).reply == b"ping|dev-rotated|-"
        assert not (await exchange(rt.port, client_context(pki, clients["untrusted"]))).ok
    async with serving(options(pki, verify="verify_peer", fail_if_no_peer_cert=True)) as rt:
        assert not (await exchange(rt.port, client_context(pki, clients["rotated"]))).ok


@pytest.mark.parametrize("backend", BACKENDS)
async def test_versions_are_enforced(pki, backend):
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    async with serving(options(pki, versions=["tlsv1.2"]), backend=backend) as rt:
        result = await exchange(rt.port, client_context(pki))
        assert result.ok and result.version == "TLSv1.2"
        assert not (await exchange(rt.port, client_context(pki, min_version=v13))).ok
    async with serving(options(pki, versions=["tlsv1.3"]), backend=backend) as rt:
        assert (await exchange(rt.port, client_context(pki))).version == "TLSv1.3"
        assert not (await exchange(rt.port, client_context(pki, max_version=v12))).ok


async def test_legacy_versions_only_when_asked_and_with_a_warning(pki):
    async with serving(options(pki)) as rt:
        old = client_context(pki, min_version=ssl.TLSVersion.TLSv1_1, max_version=ssl.TLSVersion.TLSv1_1,
                             ciphers="DEFAULT:@SECLEVEL=0")
        assert not (await exchange(rt.port, old)).ok
    async with serving(options(pki, versions=["tlsv1.2", "tlsv1.1"])) as rt:
        assert any("outdated" in w for w in rt.status()["warnings"])
        result = await exchange(rt.port, old)
        assert result.ok and result.version == "TLSv1.1", result.error


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tls12_ciphers(pki, backend):
    opts = options(pki, versions=["tlsv1.2"], ciphers=["ECDHE-ECDSA-AES128-GCM-SHA256"])
    async with serving(opts, backend=backend) as rt:
        ok = await exchange(rt.port, client_context(pki))
        assert ok.ok and ok.cipher[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert not (await exchange(rt.port, client_context(pki, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))).ok


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tls13_suites(pki, backend):
    opts = options(pki, versions=["tlsv1.3"], ciphers=["TLS_CHACHA20_POLY1305_SHA256"])
    async with serving(opts, backend=backend) as rt:
        ok = await exchange(rt.port, client_context(pki))  # offers all three default suites
        assert ok.ok and ok.cipher[0] == "TLS_CHACHA20_POLY1305_SHA256"
        refused = await asyncio.to_thread(s_client, rt.port, "-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384")
        assert b"ping|-|-" not in refused
        accepted = await asyncio.to_thread(s_client, rt.port, "-tls1_3", "-ciphersuites",
                                           "TLS_CHACHA20_POLY1305_SHA256")
        assert b"ping|-|-" in accepted


@pytest.mark.parametrize("backend", BACKENDS)
async def test_depth_limits_the_client_chain(pki, backend):
    level1 = pki.ca.intermediate("Intermediate 1")
    level2 = level1.intermediate("Intermediate 2")
    level3 = level2.intermediate("Intermediate 3")
    deep = pki.issued_files("c-deep", level3.issue("dev-deep", client=True), with_chain=True)
    for depth, accepted in ((2, False), (3, True)):
        opts = options(pki, verify="verify_peer", fail_if_no_peer_cert=True, depth=depth)
        async with serving(opts, backend=backend) as rt:
            result = await exchange(rt.port, client_context(pki, deep))
            assert result.ok is accepted, (depth, result.error)
            if not accepted:
                assert await eventually(lambda: failures(rt).get("chain_too_long")), failures(rt)


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", BACKENDS)
async def test_handshake_timeout_closes_silent_connections(pki, backend):
    async with serving(options(pki, handshake_timeout=0.3), backend=backend) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.port)
        # The server must close a client that never says hello; the bound here is generous on purpose.
        assert await asyncio.wait_for(reader.read(), 20) == b""
        writer.close()
        reasons = await eventually(lambda: failures(rt))
        assert set(reasons) & {"aborted", "handshake_timeout"}, reasons


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("honor", [True, False])
async def test_honor_cipher_order(pki, backend, honor):
    opts = options(pki, versions=["tlsv1.2"], honor_cipher_order=honor,
                   ciphers=["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"])
    async with serving(opts, backend=backend) as rt:
        client = client_context(pki, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
        result = await exchange(rt.port, client)
        expected = "ECDHE-ECDSA-AES128-GCM-SHA256" if honor else "ECDHE-ECDSA-AES256-GCM-SHA384"
        assert result.cipher[0] == expected


def _resumed(port: int, ctx: ssl.SSLContext) -> bool:
    """Two connections; the second offers the first one's session. True if it was resumed."""
    _, session, _ = tls_roundtrip(port, ctx)
    return tls_roundtrip(port, ctx, session)[2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
async def test_reuse_sessions(pki, backend, reuse, tls):
    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    async with serving(options(pki, reuse_sessions=reuse), backend=backend) as rt:
        client = client_context(pki, max_version=version)
        assert await asyncio.to_thread(_resumed, rt.port, client) is reuse


async def test_encrypted_key_with_password(pki, tmp_path):
    issued = pki.ca.issue("server-encrypted", server=True, sans=["localhost"])
    cert = pki.write("enc.pem", issued.cert_pem())
    for name, key in (("pkcs8", issued.key_pem(b"s3cret")), ("legacy", issued.key_pem(b"s3cret", legacy=True))):
        keyfile = pki.write(f"enc-{name}.key", key)
        async with serving(options(pki, certfile=cert, keyfile=keyfile, password="s3cret")) as rt:
            result = await exchange(rt.port, client_context(pki))
            assert result.ok and result.fingerprint == issued.fingerprint
        password_file = tmp_path / "password"
        password_file.write_text("s3cret\n")
        async with serving(options(pki, certfile=cert, keyfile=keyfile, password_file=str(password_file))) as rt:
            assert (await exchange(rt.port, client_context(pki))).ok
        with pytest.raises(TlsConfigError, match="encrypted and no password"):
            async with serving(options(pki, certfile=cert, keyfile=keyfile)):
                pass
        with pytest.raises(TlsConfigError, match="wrong password"):
            async with serving(options(pki, certfile=cert, keyfile=keyfile, password="nope")):
                pass


async def test_peer_identity_through_the_listener(pki, clients):
    from wharf_broker.tls import peer_identity

    seen = []

    class Capture(asyncio.Protocol):
        def connection_made(self, transport):
            seen.append(peer_identity(transport))
            transport.write(b"ok")

    async with serving(options(pki, verify="verify_peer"), protocol=Capture) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.port,
                                                       ssl=client_context(pki, clients["good"]),
                                                       server_hostname="localhost")
        assert await reader.read(2) == b"ok"
        writer.close()
    identity = seen[0]
    assert identity.subject is not None  # the CN came from the handshake's decoding, not a second parse
    assert identity.cn == "client-good" and identity.tls_version == "TLSv1.3"
    assert identity.as_identity("dn") == "CN=client-good,O=Wharf Test,C=SE"
    assert identity.as_identity("crt") == pki.client.cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_verify_peer_ext_key_usage(pki, backend):
    both = pki.issued_files("c-eku-both", pki.ca.issue(
        "dev-eku-both", eku=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]))
    opts = options(pki, verify="verify_peer", fail_if_no_peer_cert=True,
                   verify_peer_ext_key_usage="clientAuth,OID:1.3.6.1.5.5.7.3.3")
    async with serving(opts, backend=backend) as rt:
        assert (await exchange(rt.port, client_context(pki, both))).reply == b"ping|dev-eku-both|-"
        plain = (pki.path("client.pem"), pki.path("client.key"))  # clientAuth only: lacks codeSigning
        assert not (await exchange(rt.port, client_context(pki, plain))).ok
        assert failures(rt).get("ext_key_usage") == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_partial_chain_trusts_an_intermediate_alone(pki, backend):
    intermediate = pki.ca.intermediate("Partial Intermediate")
    only_intermediate = pki.write("intermediate-only.pem", intermediate.cert_pem)
    cert = pki.issued_files("c-partial", intermediate.issue("dev-partial", client=True))
    for partial, accepted in ((False, False), (True, True)):
        opts = options(pki, cacertfile=only_intermediate, verify="verify_peer", fail_if_no_peer_cert=True,
                       partial_chain=partial)
        async with serving(opts, backend=backend) as rt:
            assert (await exchange(rt.port, client_context(pki, cert))).ok is accepted, partial


@pytest.mark.parametrize("backend", BACKENDS)
async def test_legacy_version_that_cannot_be_negotiated_is_a_start_error(pki, backend):
    # GCM suites do not exist before TLS 1.2: tlsv1 is asked for but impossible with these ciphers.
    opts = options(pki, versions=["tlsv1.2", "tlsv1"], ciphers=["ECDHE-ECDSA-AES128-GCM-SHA256"])
    with pytest.raises(TlsConfigError, match="cannot negotiate tlsv1 "):
        async with serving(opts, backend=backend):
            pass
