"""The table of ssl_options rules (``config/tls_rules.py``): each rule once, with the key it is about.

The loader, the TLS layer, the admin API and the Dashboard form are tested with it in their own tests; the
MQTTBroker CRD against it in tests/realapi/test_mqttbroker_crd.py."""

from __future__ import annotations

import pytest

from wharf_broker.config.model import OcspOptions, SslOptions
from wharf_broker.config.tls_rules import RULES, Problem, check_ssl_options

BASE = dict(certfile="s.pem", keyfile="s.key")


def test_consistent_options_break_no_rule():
    assert check_ssl_options(SslOptions(**BASE)) == []
    assert check_ssl_options(SslOptions(**BASE, verify="verify_peer", cacertfile="ca.pem", fail_if_no_peer_cert=True,
                                        enable_crl_check=True, verify_peer_ext_key_usage="clientAuth", depth=0,
                                        versions=["tlsv1.2", "tlsv1", "tlsv1.1"],
                                        ciphers=["TLS_AES_128_GCM_SHA256:ECDHE-RSA-AES128-GCM-SHA256"],
                                        ocsp=OcspOptions(enable_ocsp_stapling=True, responder_url="https://o.example",
                                                         issuer_pem="ca.pem"))) == []
    # OCSP settings are not checked while stapling is off.
    assert check_ssl_options(SslOptions(**BASE, ocsp=OcspOptions(responder_url="ftp://x", refresh_interval=0))) == []


@pytest.mark.parametrize("overrides, field, message", [
    (dict(certfile=""), "certfile", "is required for a TLS listener"),
    (dict(verify="sometimes"), "verify", "must be verify_peer or verify_none, not 'sometimes'"),
    (dict(fail_if_no_peer_cert=True), "fail_if_no_peer_cert", "needs verify = verify_peer"),
    (dict(verify="verify_peer"), "cacertfile", "is required with verify = verify_peer (clients are checked "
                                               "against it)"),
    (dict(verify_peer_ext_key_usage="clientAuth"), "verify_peer_ext_key_usage", "needs verify = verify_peer"),
    (dict(versions=[]), "versions", "must name at least one TLS version"),
    (dict(versions=["tlsv1.3", "sslv3"]), "versions", "unknown version 'sslv3' (use tlsv1, tlsv1.1, tlsv1.2, "
                                                      "tlsv1.3)"),
    (dict(versions=["tlsv1.2", "tlsv1.2"]), "versions", "lists a version twice"),
    (dict(depth=101), "depth", "must be between 0 and 100, not 101"),
    (dict(depth=-1), "depth", "must be between 0 and 100, not -1"),
    (dict(reload_interval=0), "reload_interval", "must be greater than 0"),
    (dict(ocsp=OcspOptions(enable_ocsp_stapling=True, responder_url="ftp://x", issuer_pem="i")),
     "ocsp.responder_url", "not an http(s) URL: 'ftp://x'"),
])
def test_each_broken_rule_is_one_problem_by_key(overrides, field, message):
    [problem] = check_ssl_options(SslOptions(**{**BASE, **overrides}))
    assert (problem.field, problem.message) == (field, message)
    assert str(problem) == f"{field}: {message}" and problem.label


def test_every_problem_is_reported_in_table_order():
    problems = check_ssl_options(SslOptions(keyfile="", fail_if_no_peer_cert=True, depth=500,
                                            ocsp=OcspOptions(enable_ocsp_stapling=True)))
    assert [p.field for p in problems] == ["certfile", "keyfile", "fail_if_no_peer_cert", "depth",
                                           "ocsp.responder_url", "ocsp.issuer_pem"]
    assert all(isinstance(p, Problem) for p in problems)


def test_every_rule_names_an_ssl_options_key():
    options = SslOptions()
    for rule in RULES:
        owner, _, name = rule.field.rpartition(".")
        assert hasattr(getattr(options, owner) if owner else options, name), rule.field
