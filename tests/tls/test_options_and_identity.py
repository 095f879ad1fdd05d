"""Option validation (clear errors, never a half-applied listener) and the X.509 identity formats."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from wharf_broker.config.model import OcspOptions, PskAuthentication, SslOptions
from wharf_broker.tls import PeerIdentity, TlsConfigError, validate_options
from wharf_broker.tls.devpki import CertificateAuthority

BASE = dict(certfile="s.pem", keyfile="s.key", cacertfile="ca.pem")


@pytest.mark.parametrize("overrides, message", [
    (dict(certfile=""), "certfile: is required"),
    (dict(keyfile=""), "keyfile: is required"),
    (dict(fail_if_no_peer_cert=True), "needs verify = verify_peer"),
    (dict(verify="verify_peer", cacertfile=""), "cacertfile: is required with verify = verify_peer"),
    (dict(enable_crl_check=True), "enable_crl_check: needs verify = verify_peer"),
    (dict(versions=[]), "at least one TLS version"),
    (dict(versions=["tlsv9"]), "unknown version"),
    (dict(ciphers=["NOT-A-CIPHER"]), "OpenSSL knows none"),
    (dict(ciphers=["TLS_NOT_A_SUITE"]), "unknown TLS 1.3 suite"),
    (dict(depth=-1), "depth"),
    (dict(depth=1000), "depth"),
    (dict(handshake_timeout=0), "handshake_timeout"),
    (dict(reload_interval=0), "reload_interval"),
    (dict(verify="verify_peer", verify_peer_ext_key_usage="clientAuth,bogus"), "unknown usage"),
    (dict(ocsp=OcspOptions(enable_ocsp_stapling=True, responder_url="ftp://x", issuer_pem="i")), "not an http"),
    (dict(ocsp=OcspOptions(enable_ocsp_stapling=True, responder_url="http://x/")), "ocsp.issuer_pem: is required"),
])
def test_bad_options_are_clear_errors(overrides, message):
    with pytest.raises(TlsConfigError, match=message):
        validate_options(SslOptions(**{**BASE, **overrides}))


def test_policy_derivation():
    policy = validate_options(SslOptions(**BASE, verify="verify_peer", enable_crl_check=True, crlfile="c.pem",
                                         ciphers=["ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"],
                                         verify_peer_ext_key_usage="clientAuth,OID:1.3.6.1.5.5.7.3.2"))
    assert policy.tls12_ciphers == "ECDHE-RSA-AES128-GCM-SHA256"
    assert policy.tls13_suites == "TLS_AES_128_GCM_SHA256"
    assert policy.crlfile == "c.pem" and policy.min_version == "tlsv1.2" and policy.max_version == "tlsv1.3"
    assert len(policy.required_ekus) == 2 and not policy.needs_pyopenssl
    legacy = validate_options(SslOptions(**BASE, versions=["tlsv1.2", "tlsv1"]))
    assert any("outdated" in w for w in legacy.warnings)
    psk = validate_options(SslOptions(**BASE), PskAuthentication(enable=True, init_file="p"))
    assert psk.psk_enabled and psk.needs_pyopenssl
    with pytest.raises(TlsConfigError, match="init_file is required"):
        validate_options(SslOptions(**BASE), PskAuthentication(enable=True))


@pytest.fixture(scope="module")
def client_der():
    ca = CertificateAuthority("Identity CA")
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme IoT"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "sensors"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "dev-001")])
    return ca.issue("dev-001", client=True, subject=subject).cert.public_bytes(serialization.Encoding.DER)


def test_identity_formats_match_emqx(client_der):
    identity = PeerIdentity(der=client_der, tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")
    assert identity.as_identity("cn") == "dev-001"
    assert identity.as_identity("dn") == "CN=dev-001,OU=sensors,O=Acme IoT,C=SE"
    assert identity.as_identity("crt") == client_der
    assert identity.as_identity("pem") == base64.b64encode(client_der).decode()
    assert identity.as_identity("md5") == hashlib.md5(client_der).hexdigest()
    assert identity.psk_identity is None
    with pytest.raises(ValueError, match="one of"):
        identity.as_identity("sha1")
    anonymous = PeerIdentity(der=None, tls_version="TLSv1.3", cipher="x")
    assert anonymous.as_identity("cn") is None and anonymous.cn is None


def test_identity_with_control_characters_is_refused():
    ca = CertificateAuthority("Identity CA 2")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil\x07name")])
    der = ca.issue("x", client=True, subject=subject).cert.public_bytes(serialization.Encoding.DER)
    identity = PeerIdentity(der=der, tls_version="TLSv1.3", cipher="x")
    with pytest.raises(ValueError, match="control characters"):
        identity.as_identity("cn")
    with pytest.raises(ValueError, match="control characters"):
        identity.as_identity("dn")
    assert identity.as_identity("md5") == hashlib.md5(der).hexdigest()


def test_cn_from_the_decoded_subject_matches_the_parsed_certificate(tmp_path):
    # Several CNs, a multi-valued RDN and non-ASCII text: the stdlib's decoding must give what parsing gives.
    import ssl

    ca = CertificateAuthority("Identity CA 3")
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-ä"),
                                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "dev-002")]),
    ])
    cert = ca.issue("x", client=True, subject=subject).cert
    pem = tmp_path / "client.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    decoded = ssl._ssl._test_decode_cert(str(pem))["subject"]
    der = cert.public_bytes(serialization.Encoding.DER)
    parsed = PeerIdentity(der=der, tls_version="TLSv1.3", cipher="x")
    fast = PeerIdentity(der=der, tls_version="TLSv1.3", cipher="x", subject=decoded)
    assert parsed.cn == "gateway-ä,dev-002"
    assert fast.cn == parsed.cn
    assert fast.as_identity("dn") == parsed.as_identity("dn")
