"""Validation of Secret material before the operator signals any pod."""

from __future__ import annotations

import datetime

import pytest
from operator_pki import NOW, make_ca, make_leaf
from wharf_operator import certs


@pytest.fixture(scope="module")
def ca():
    return make_ca()


def test_valid_material_reports_fingerprint_and_window(ca):
    leaf = make_leaf(ca)
    material = certs.validate(leaf.cert_pem, leaf.key_pem(), ca.cert_pem)
    assert material.fingerprint == leaf.fingerprint
    assert material.not_after == leaf.cert.not_valid_after_utc
    assert material.chain_checked is True


def test_chain_through_an_intermediate_in_tls_crt(ca):
    intermediate = make_ca("Wharf Intermediate", issuer=ca)
    leaf = make_leaf(intermediate)
    material = certs.validate(leaf.cert_pem + intermediate.cert_pem, leaf.key_pem(), ca.cert_pem)
    assert material.fingerprint == leaf.fingerprint


def test_bundle_with_old_and_new_ca_trusts_both(ca):
    new_ca = make_ca("Wharf CA 2")
    bundle = ca.cert_pem + new_ca.cert_pem
    for issuer in (ca, new_ca):
        leaf = make_leaf(issuer)
        assert certs.validate(leaf.cert_pem, leaf.key_pem(), bundle).fingerprint == leaf.fingerprint


def test_chain_out_of_order_is_refused_as_the_brokers_refuse_it(ca):
    # The brokers serve tls.crt as it is, and clients need each certificate followed by its issuer.
    intermediate = make_ca("Wharf Intermediate", issuer=ca)
    leaf = make_leaf(intermediate)
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(leaf.cert_pem + ca.cert_pem + intermediate.cert_pem, leaf.key_pem(), ca.cert_pem)
    assert refused.value.reason == certs.MISORDERED
    assert "certificate #1 is not issued by certificate #2" in refused.value.message


def test_key_that_belongs_to_another_certificate_is_refused(ca):
    leaf, other = make_leaf(ca), make_leaf(ca)
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(leaf.cert_pem, other.key_pem(), ca.cert_pem)
    assert refused.value.reason == certs.KEY_MISMATCH


def test_certificate_from_an_untrusted_ca_is_refused(ca):
    stranger = make_ca("Somebody Else")
    leaf = make_leaf(stranger)
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(leaf.cert_pem, leaf.key_pem(), ca.cert_pem)
    assert refused.value.reason == certs.UNTRUSTED
    assert "does not chain" in refused.value.message


def test_forged_issuer_name_without_its_signature_is_refused(ca):
    impostor = make_ca(ca.cert.subject.rfc4514_string().removeprefix("CN="))  # same name, other key
    leaf = make_leaf(impostor)
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(leaf.cert_pem, leaf.key_pem(), ca.cert_pem)
    assert refused.value.reason == certs.UNTRUSTED


def test_expired_and_not_yet_valid_certificates_are_refused(ca):
    expired = make_leaf(ca, not_before=NOW - datetime.timedelta(days=10), not_after=NOW - datetime.timedelta(days=1))
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(expired.cert_pem, expired.key_pem(), ca.cert_pem)
    assert refused.value.reason == certs.EXPIRED
    future = make_leaf(ca, not_before=NOW + datetime.timedelta(days=1), not_after=NOW + datetime.timedelta(days=9))
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(future.cert_pem, future.key_pem(), ca.cert_pem)
    assert refused.value.reason == certs.NOT_YET_VALID


@pytest.mark.parametrize("cert_pem, key_pem, reason", [
    (b"", b"x", certs.MISSING),
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", b"x", certs.UNPARSABLE),
    (b"garbage", b"x", certs.UNPARSABLE),
])
def test_garbage_is_refused_with_a_reason(cert_pem, key_pem, reason):
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(cert_pem, key_pem)
    assert refused.value.reason == reason


def test_unparsable_key_is_refused(ca):
    leaf = make_leaf(ca)
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(leaf.cert_pem, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert refused.value.reason == certs.UNPARSABLE


def test_encrypted_key_needs_its_password(ca):
    leaf = make_leaf(ca)
    encrypted = leaf.key_pem(b"s3cret")
    assert certs.validate(leaf.cert_pem, encrypted, ca.cert_pem, password=b"s3cret").fingerprint == leaf.fingerprint
    for wrong in (None, b"nope"):
        with pytest.raises(certs.InvalidMaterial) as refused:
            certs.validate(leaf.cert_pem, encrypted, ca.cert_pem, password=wrong)
        assert refused.value.reason == certs.UNPARSABLE


def test_without_a_ca_bundle_the_chain_is_not_claimed_checked(ca):
    leaf = make_leaf(ca)
    assert certs.validate(leaf.cert_pem, leaf.key_pem()).chain_checked is False


def test_a_wrong_issuer_passes_its_own_ca_crt_but_not_the_pinned_issuer_ca(ca):
    """An issuer pointed at a wrong CA writes that CA as the Secret's ca.crt: only a pinned bundle refuses it."""
    wrong_ca = make_ca("Wrong CA")
    wrong = make_leaf(wrong_ca)
    assert certs.validate(wrong.cert_pem, wrong.key_pem(), certs.trust_anchors(wrong_ca.cert_pem, None, None))
    with pytest.raises(certs.InvalidMaterial) as refused:
        certs.validate(wrong.cert_pem, wrong.key_pem(), certs.trust_anchors(wrong_ca.cert_pem, ca.cert_pem, None))
    assert refused.value.reason == certs.UNTRUSTED
    right = make_leaf(ca)
    assert certs.validate(right.cert_pem, right.key_pem(),
                          certs.trust_anchors(wrong_ca.cert_pem, ca.cert_pem, None)).chain_checked


def test_trust_anchors_pin_replaces_the_secrets_ca_and_the_client_bundle_joins():
    assert certs.trust_anchors(b"SECRET\n", None, None) == b"SECRET\n"
    assert certs.trust_anchors(b"SECRET\n", b"PINNED\n", None) == b"PINNED\n"
    assert certs.trust_anchors(b"SECRET\n", None, b"CLIENTS\n") == b"SECRET\nCLIENTS\n"
    assert certs.trust_anchors(b"SECRET\n", b"PINNED\n", b"CLIENTS\n") == b"PINNED\nCLIENTS\n"
    assert certs.trust_anchors(None, None, b"CLIENTS\n") == b"CLIENTS\n"
    assert certs.trust_anchors(None, None, None) is None
