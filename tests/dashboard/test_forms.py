"""Unit tests for the SSL listener form's validation (``broker/dashboard/forms.py``): no I/O, no broker."""

from __future__ import annotations

import pytest
from wharf_broker.config.model import OcspOptions, SslOptions
from wharf_broker.config.tls_rules import check_ssl_options
from wharf_broker.dashboard.forms import (MAX_UPLOAD_BYTES, OPERATOR_OWNED, form_field, material_field, parse_ssl_form,
                                          place_problems)
from wharf_broker.tls import TlsConfigError, validate_options

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def current(**changes) -> SslOptions:
    base = dict(certfile="/certs/server.crt", keyfile="/certs/server.key", cacertfile="/certs/ca.crt")
    return SslOptions(**{**base, **changes})


def form_fields(**overrides) -> dict[str, list[str]]:
    """What the browser posts for an unchanged default listener form."""
    fields = {"versions": ["tlsv1.3", "tlsv1.2"], "depth": ["10"], "ciphers": [""], "reload_interval": ["120s"],
              "ocsp_responder_url": [""], "ocsp_refresh_interval": ["300s"], "password": [""]}
    for name, value in overrides.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value if isinstance(value, list) else [value]
    return fields


def test_an_unchanged_form_is_valid_and_keeps_the_defaults():
    form = parse_ssl_form(form_fields(), {}, current(), psk_enabled=False)
    assert form.errors == {}
    assert form.changes["verify"] == "verify_none"
    assert form.changes["fail_if_no_peer_cert"] is False
    assert form.changes["versions"] == ["tlsv1.3", "tlsv1.2"]
    assert form.changes["depth"] == 10
    assert form.changes["ciphers"] == []
    assert form.changes["reload_interval"] == 120.0
    assert form.changes["ocsp"] == {"enable_ocsp_stapling": False, "responder_url": "", "refresh_interval": 300.0}
    assert "password" not in form.changes  # an empty password field means "unchanged"
    assert form.uploads == {}


def test_verify_and_fail_if_no_peer_cert_on():
    form = parse_ssl_form(form_fields(verify="on", fail_if_no_peer_cert="on"), {}, current(), psk_enabled=False)
    assert form.errors == {}
    assert form.changes["verify"] == "verify_peer" and form.changes["fail_if_no_peer_cert"] is True


def test_fail_if_no_peer_cert_needs_tls_verify():
    form = parse_ssl_form(form_fields(fail_if_no_peer_cert="on"), {}, current(), psk_enabled=False)
    assert form.errors == {"fail_if_no_peer_cert": "Fail If No Peer Cert needs TLS Verify on"}


def test_crl_check_needs_tls_verify():
    form = parse_ssl_form(form_fields(enable_crl_check="on"), {}, current(), psk_enabled=False)
    assert "enable_crl_check" in form.errors


def test_tls_verify_needs_a_ca_unless_one_is_uploaded():
    without_ca = current(cacertfile="")
    form = parse_ssl_form(form_fields(verify="on"), {}, without_ca, psk_enabled=False)
    assert "CA certificate" in form.errors["cacertfile"]
    form = parse_ssl_form(form_fields(verify="on"), {"cacertfile": CERT}, without_ca, psk_enabled=False)
    assert form.errors == {} and form.uploads == {"cacertfile": CERT}


@pytest.mark.parametrize("versions, error", [
    ([], "choose at least one TLS version"),
    (["tlsv1.3", "sslv3"], "unknown TLS version 'sslv3'"),
])
def test_versions(versions, error):
    form = parse_ssl_form(form_fields(versions=versions), {}, current(), psk_enabled=False)
    assert form.errors == {"versions": error}


def test_psk_needs_tls_1_2_or_below():
    form = parse_ssl_form(form_fields(versions=["tlsv1.3"]), {}, current(), psk_enabled=True)
    assert "PSK" in form.errors["versions"]
    form = parse_ssl_form(form_fields(versions=["tlsv1.3", "tlsv1.2"]), {}, current(), psk_enabled=True)
    assert form.errors == {}
    # Without PSK, TLS 1.3 alone is fine.
    assert parse_ssl_form(form_fields(versions=["tlsv1.3"]), {}, current(), psk_enabled=False).errors == {}


@pytest.mark.parametrize("depth, ok", [("0", True), ("10", True), ("100", True), ("101", False), ("-1", False),
                                       ("ten", False), ("", False), ("1.5", False)])
def test_depth_is_a_whole_number_from_0_to_100(depth, ok):
    form = parse_ssl_form(form_fields(depth=depth), {}, current(), psk_enabled=False)
    assert ("depth" not in form.errors) is ok
    if ok:
        assert form.changes["depth"] == int(depth)


def test_ciphers_are_split_on_commas_and_whitespace():
    text = "TLS_AES_256_GCM_SHA384, ECDHE-RSA-AES128-GCM-SHA256\nECDHE-ECDSA-AES256-GCM-SHA384"
    form = parse_ssl_form(form_fields(ciphers=text), {}, current(), psk_enabled=False)
    assert form.errors == {}
    assert form.changes["ciphers"] == ["TLS_AES_256_GCM_SHA384", "ECDHE-RSA-AES128-GCM-SHA256",
                                       "ECDHE-ECDSA-AES256-GCM-SHA384"]
    bad = parse_ssl_form(form_fields(ciphers="AES128;rm -rf"), {}, current(), psk_enabled=False)
    assert "ciphers" in bad.errors


@pytest.mark.parametrize("text, seconds", [("120s", 120.0), ("5m", 300.0), ("1h30m", 5400.0), ("45", 45.0)])
def test_reload_interval_durations(text, seconds):
    form = parse_ssl_form(form_fields(reload_interval=text), {}, current(), psk_enabled=False)
    assert form.errors == {} and form.changes["reload_interval"] == seconds


@pytest.mark.parametrize("text", ["0s", "soon", "", "-5s"])
def test_reload_interval_refuses_nonsense(text):
    form = parse_ssl_form(form_fields(reload_interval=text), {}, current(), psk_enabled=False)
    assert "reload_interval" in form.errors


def test_password_replace_keep_and_clear():
    keep = parse_ssl_form(form_fields(), {}, current(password="old"), psk_enabled=False)
    assert "password" not in keep.changes
    replace = parse_ssl_form(form_fields(password=" new secret "), {}, current(password="old"), psk_enabled=False)
    assert replace.changes["password"] == " new secret "
    clear = parse_ssl_form(form_fields(clear_password="on"), {}, current(password="old"), psk_enabled=False)
    assert clear.changes["password"] == ""


def test_ocsp_stapling_needs_a_responder_url_and_an_issuer():
    form = parse_ssl_form(form_fields(enable_ocsp_stapling="on"), {}, current(), psk_enabled=False)
    assert "responder URL" in form.errors["ocsp_responder_url"]
    assert "issuer" in form.errors["ocsp_issuer_pem"]
    form = parse_ssl_form(form_fields(enable_ocsp_stapling="on", ocsp_responder_url="ftp://x"), {}, current(),
                          psk_enabled=False)
    assert form.errors["ocsp_responder_url"] == "an http:// or https:// URL"
    good = parse_ssl_form(form_fields(enable_ocsp_stapling="on", ocsp_responder_url="http://127.0.0.1:8080/ocsp",
                                      ocsp_refresh_interval="5m"), {"ocsp_issuer_pem": CERT}, current(),
                          psk_enabled=False)
    assert good.errors == {}
    assert good.changes["ocsp"] == {"enable_ocsp_stapling": True, "responder_url": "http://127.0.0.1:8080/ocsp",
                                    "refresh_interval": 300.0}
    existing = current(ocsp=OcspOptions(issuer_pem="/certs/ca.crt"))
    assert parse_ssl_form(form_fields(enable_ocsp_stapling="on", ocsp_responder_url="https://ocsp.example/"), {},
                          existing, psk_enabled=False).errors == {}


def test_uploads_must_be_pem_of_the_right_kind_and_small():
    form = parse_ssl_form(form_fields(), {"certfile": KEY, "keyfile": CERT}, current(), psk_enabled=False)
    assert form.errors["certfile"].startswith("not a PEM certificate")
    assert form.errors["keyfile"].startswith("not a PEM private key")
    assert form.uploads == {}
    big = CERT + b"x" * MAX_UPLOAD_BYTES
    assert "larger than" in parse_ssl_form(form_fields(), {"certfile": big}, current(), psk_enabled=False).errors[
        "certfile"]
    ok = parse_ssl_form(form_fields(), {"certfile": CERT, "keyfile": KEY}, current(), psk_enabled=False)
    assert ok.errors == {} and ok.uploads == {"certfile": CERT, "keyfile": KEY}


def test_operator_owned_fields_are_not_read_and_refused_when_posted():
    owned = OPERATOR_OWNED
    quiet = parse_ssl_form({}, {}, current(), psk_enabled=False, owned=owned)
    assert quiet.errors == {} and quiet.changes == {}
    pushed = parse_ssl_form(form_fields(depth="3"), {"certfile": CERT}, current(), psk_enabled=False, owned=owned)
    assert pushed.errors["depth"].startswith("owned by the MQTTBroker resource")
    assert pushed.errors["certfile"].startswith("owned by the MQTTBroker resource")
    assert pushed.changes == {} and pushed.uploads == {}


@pytest.mark.parametrize("overrides, field, label", [
    (dict(verify="verify_none", fail_if_no_peer_cert=True), "fail_if_no_peer_cert",
     "Fail If No Peer Cert needs TLS Verify on"),
    (dict(verify="verify_peer", cacertfile=""), "cacertfile", "TLS Verify needs a CA certificate"),
    (dict(depth=500), "depth", "a whole number from 0 to 100"),
    (dict(ocsp=OcspOptions(enable_ocsp_stapling=True, responder_url="ftp://x", issuer_pem="/i.pem")),
     "ocsp_responder_url", "an http:// or https:// URL"),
    (dict(ocsp=OcspOptions(enable_ocsp_stapling=True, responder_url="http://x/")), "ocsp_issuer_pem",
     "OCSP stapling needs the issuer"),
    (dict(handshake_timeout=0), "_form", "handshake_timeout: must be greater than 0"),
])
def test_problems_of_the_options_table_land_next_to_their_field_by_key(overrides, field, label):
    """The same table the loader and the TLS layer apply; its problems are placed by key, not by their words."""
    problems = check_ssl_options(current(**overrides))
    errors: dict[str, str] = {}
    place_problems(problems, errors)
    assert list(errors) == [field] and errors[field].startswith(label)
    assert form_field(problems[0].field) == field


def test_problems_the_tls_layer_finds_land_next_to_their_field():
    with pytest.raises(TlsConfigError) as refused:
        validate_options(current(verify="verify_peer", ciphers=["NOT-A-CIPHER"]))
    errors: dict[str, str] = {}
    place_problems(refused.value.problems, errors)
    assert errors == {"ciphers": "OpenSSL knows none of 'NOT-A-CIPHER'"}


@pytest.mark.parametrize("message, field", [
    ("keyfile does not match the first certificate in certfile (half-updated pair?)", "keyfile"),
    ("certfile: certificate not valid now (valid 2020-01-01 00:00 to 2021-01-01 00:00 UTC)", "certfile"),
    ("cacertfile: no PEM certificate in it (empty, garbage or half-written file?)", "cacertfile"),
    ("ocsp.issuer_pem: not the issuer of the certificate in certfile", "ocsp_issuer_pem"),
    ("keyfile: the key is encrypted and no password is set (ssl_options.password)", "keyfile"),
    ("something else entirely", "_form"),
])
def test_refusals_of_certificate_material_land_next_to_their_upload(message, field):
    assert material_field(message) == field
