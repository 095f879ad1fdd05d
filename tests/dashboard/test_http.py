"""The Dashboard over plain HTTP against a real broker process: login, sessions, CSRF, what pages never show,
and listener updates (with uploads) proven by real TLS handshakes."""

from __future__ import annotations

import json
import os
import re

from wharf_broker.dashboard.passwords import hash_password, verify_password

from .conftest import PASSWORD, TOKEN, HttpSession, broker_config, csrf_of, tls_probe

SSL_PAGE = "/dashboard/listeners/ssl%3Adefault"
DEFAULT_FIELDS = [("versions", "tlsv1.3"), ("versions", "tlsv1.2"), ("depth", "10"), ("ciphers", ""),
                  ("reload_interval", "120s"), ("ocsp_responder_url", ""), ("ocsp_refresh_interval", "300s"),
                  ("password", "")]


def logged_in(broker) -> HttpSession:
    session = HttpSession(broker.admin_url)
    status, headers, _ = session.login()
    assert status == 303 and headers["Location"] == "/dashboard/"
    return session


def ssl_options(broker) -> dict:
    status, body = broker.admin("GET", "/api/v5/listeners/ssl:default")
    assert status == 200
    return json.loads(body)["ssl_options"]


def test_pages_need_a_session(http_session):
    for path in ("/dashboard/", "/dashboard/listeners", SSL_PAGE, "/dashboard/certificates", "/dashboard/clients"):
        status, headers, _ = http_session.get(path)
        assert status == 303 and headers["Location"] == "/dashboard/login", path
    status, headers, _ = http_session.get("/")
    assert status == 302 and headers["Location"] == "/dashboard/"


def test_login_sets_a_strict_http_only_cookie_and_nothing_secret_in_urls(dashboard_broker):
    session = HttpSession(dashboard_broker.admin_url)
    status, _, page = session.get("/dashboard/login")
    assert 'method="post"' in page and PASSWORD not in page
    token = csrf_of(page)
    request_body = {"csrf": token, "username": "admin", "password": PASSWORD}
    status, headers, _ = session.post_form("/dashboard/login", request_body)
    assert status == 303 and headers["Location"] == "/dashboard/"
    cookie = headers["Set-Cookie"]
    assert "wharf_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/dashboard" in cookie
    assert PASSWORD not in cookie
    status, headers, page = session.get("/dashboard/")
    assert status == 200 and "Overview" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    # Every link and form target on the page is free of credentials.
    for target in re.findall(r'(?:href|action)="([^"]+)"', page):
        assert PASSWORD not in target and TOKEN not in target and "csrf" not in target


def test_wrong_credentials_and_login_csrf(dashboard_broker):
    session = HttpSession(dashboard_broker.admin_url)
    status, _, page = session.login(password="wrong")
    assert status == 401 and "Wrong username, password or token" in page
    status, _, page = session.login(username="root", password=PASSWORD)  # the password of another user
    assert status == 401
    # A login post that did not come from our login form (no matching token) is refused.
    fresh = HttpSession(dashboard_broker.admin_url)
    status, _, _ = fresh.post_form("/dashboard/login", {"csrf": "forged", "username": "admin", "password": PASSWORD})
    assert status == 403
    assert fresh.cookie("wharf_session") is None


def test_token_logs_in_with_any_username(dashboard_broker):
    session = HttpSession(dashboard_broker.admin_url)
    status, _, _ = session.login(username="", password=TOKEN)
    assert status == 303
    assert session.get("/dashboard/listeners")[0] == 200


def test_the_session_does_not_open_the_api(dashboard_broker):
    session = logged_in(dashboard_broker)
    status, _, _ = session.get("/api/v5/listeners")
    assert status == 401
    status, _ = dashboard_broker.admin("GET", "/api/v5/listeners")  # the token still works
    assert status == 200


def test_posts_need_the_csrf_token_and_a_same_origin(dashboard_broker):
    session = logged_in(dashboard_broker)
    _, _, page = session.get(SSL_PAGE)
    token = csrf_of(page)
    before = ssl_options(dashboard_broker)
    fields = DEFAULT_FIELDS + [("verify", "on")]
    assert session.post_multipart(SSL_PAGE, fields, {})[0] == 403
    assert session.post_multipart(SSL_PAGE, fields + [("csrf", "not-the-token")], {})[0] == 403
    status, _, _ = session.request("POST", "/dashboard/certificates/ssl%3Adefault/reload",
                                   f"csrf={token}".encode(),
                                   {"Content-Type": "application/x-www-form-urlencoded",
                                    "Origin": "http://evil.invalid"})
    assert status == 403
    assert ssl_options(dashboard_broker) == before


def test_logout_ends_the_session(dashboard_broker):
    session = logged_in(dashboard_broker)
    _, _, page = session.get("/dashboard/")
    cookie = session.cookie("wharf_session")
    status, headers, _ = session.post_form("/dashboard/logout", {"csrf": csrf_of(page)})
    assert status == 303 and headers["Location"] == "/dashboard/login"
    replay = HttpSession(dashboard_broker.admin_url)
    status, _, _ = replay.request("GET", "/dashboard/", headers={"Cookie": f"wharf_session={cookie}"})
    assert status == 303


def test_encrypted_key_with_key_password_and_nothing_secret_comes_back(dashboard_broker, pki, tmp_path):
    session = logged_in(dashboard_broker)
    _, _, page = session.get(SSL_PAGE)
    new = pki.ca.issue("broker-encrypted", server=True, sans=["localhost"])
    key_password = "pw-for-the-key-7"
    fields = DEFAULT_FIELDS[:-1] + [("csrf", csrf_of(page)), ("password", key_password)]
    # Without the password the encrypted key is refused, next to the key field.
    status, _, refused = session.post_multipart(SSL_PAGE, DEFAULT_FIELDS + [("csrf", csrf_of(page))],
                                                {"certfile": new.cert_pem(),
                                                 "keyfile": new.key_pem(password=key_password.encode())})
    assert status == 400
    assert re.search(r'id="error-keyfile"[^>]*>keyfile: the key is encrypted and no password is set', refused)
    assert tls_probe(dashboard_broker.port("ssl:default"), pki).fingerprint == pki.server.fingerprint
    status, _, _ = session.post_multipart(SSL_PAGE, fields, {
        "certfile": new.cert_pem(), "keyfile": new.key_pem(password=key_password.encode())})
    assert status == 303, _
    assert tls_probe(dashboard_broker.port("ssl:default"), pki).fingerprint == new.fingerprint
    _, _, page = session.get(SSL_PAGE)
    assert key_password not in page and "PRIVATE KEY" not in page and "ENCRYPTED" not in page
    assert "set (type to replace)" in page
    assert ssl_options(dashboard_broker)["password"] == "******"


def test_replaced_uploads_are_removed_and_the_first_files_stay(dashboard_broker, pki, tmp_path):
    session = logged_in(dashboard_broker)
    folder = tmp_path / "uploads" / "ssl-default"
    served = []
    for name in ("first", "second"):
        _, _, page = session.get(SSL_PAGE)
        issued = pki.ca.issue(f"broker-{name}", server=True, sans=["localhost"])
        status, _, body = session.post_multipart(SSL_PAGE, DEFAULT_FIELDS + [("csrf", csrf_of(page))],
                                                 {"certfile": issued.cert_pem(), "keyfile": issued.key_pem()})
        assert status == 303, body
        served.append(issued)
        assert tls_probe(dashboard_broker.port("ssl:default"), pki).fingerprint == issued.fingerprint
    options = ssl_options(dashboard_broker)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [os.path.basename(options["certfile"]), os.path.basename(options["keyfile"])])
    # The configured originals outside the upload folder are never touched.
    assert (pki.dir / "server.crt").read_bytes() == pki.server.cert_pem()


def test_a_refused_update_writes_nothing(dashboard_broker, pki, tmp_path):
    session = logged_in(dashboard_broker)
    _, _, page = session.get(SSL_PAGE)
    other = pki.ca.issue("broker-other", server=True)
    mismatched = pki.ca.issue("broker-mismatch", server=True)
    status, _, body = session.post_multipart(SSL_PAGE, DEFAULT_FIELDS + [("csrf", csrf_of(page))],
                                             {"certfile": other.cert_pem(), "keyfile": mismatched.key_pem()})
    assert status == 400 and "does not match" in body
    folder = tmp_path / "uploads" / "ssl-default"
    assert not folder.exists() or not list(folder.iterdir())


def test_password_hash_login(broker_process, pki, tmp_path):
    encoded = hash_password("hashed secret", iterations=1000)
    assert verify_password("hashed secret", encoded) and not verify_password("other", encoded)
    broker = broker_process(broker_config(pki, tmp_path / "up", f'default_password_hash = "{encoded}"\n'
                                                                 'default_username = "ops"'), token=TOKEN)
    session = HttpSession(broker.admin_url)
    assert session.login(username="ops", password=PASSWORD)[0] == 401  # the hash wins over default_password
    assert session.login(username="ops", password="hashed secret")[0] == 303


def test_managed_listener_refuses_owned_fields(broker_process, pki, tmp_path):
    broker = broker_process(broker_config(pki, tmp_path / "up", 'managed_by = "iot/edge-broker"'), token=TOKEN)
    session = logged_in(broker)
    _, _, page = session.get(SSL_PAGE)
    assert "Owned by MQTTBroker iot/edge-broker" in page and 'id="update"' not in page
    before = ssl_options(broker)
    status, _, body = session.post_multipart(SSL_PAGE, [("csrf", csrf_of(page)), ("verify", "on"), ("depth", "3")],
                                             {"certfile": pki.server.cert_pem()})
    assert status == 400 and "owned by the MQTTBroker resource" in body
    # The refused page shows the live values, not what was posted.
    assert re.search(r'id="depth"[^>]*value="10"', body)
    assert ssl_options(broker) == before


def test_crl_check_with_an_uploaded_crl(dashboard_broker, pki):
    session = logged_in(dashboard_broker)
    revoked = pki.ca.issue("device-revoked", client=True)
    pki.ca.revoke(revoked.cert)
    _, _, page = session.get(SSL_PAGE)
    fields = DEFAULT_FIELDS + [("csrf", csrf_of(page)), ("verify", "on"), ("enable_crl_check", "on")]
    # A CRL the CA did not sign is refused next to the CRL field.
    from wharf_broker.tls.devpki import CertificateAuthority
    stranger_crl = CertificateAuthority("Some Other CA").crl_pem()
    status, _, body = session.post_multipart(SSL_PAGE, fields, {"crlfile": stranger_crl})
    assert status == 400 and re.search(r'id="error-crlfile"[^>]*>crlfile: no CA in cacertfile issued the CRL', body)
    port = dashboard_broker.port("ssl:default")
    assert tls_probe(port, pki, client=revoked).connected  # nothing changed
    status, _, body = session.post_multipart(SSL_PAGE, fields, {"crlfile": pki.ca.crl_pem()})
    assert status == 303, body
    assert not tls_probe(port, pki, client=revoked).connected
    assert tls_probe(port, pki, client=pki.client).connected
    status, _, page = session.get("/dashboard/certificates")
    assert re.search(r"<dt>CRL check</dt><dd>.*local crls</span> 1", page), page


def test_a_certificate_near_expiry_is_highlighted(dashboard_broker, pki):
    session = logged_in(dashboard_broker)
    _, _, page = session.get(SSL_PAGE)
    short = pki.ca.issue("broker-short-lived", server=True, sans=["localhost"], days=3)
    status, _, body = session.post_multipart(SSL_PAGE, DEFAULT_FIELDS + [("csrf", csrf_of(page))],
                                             {"certfile": short.cert_pem(), "keyfile": short.key_pem()})
    assert status == 303, body
    _, _, page = session.get("/dashboard/listeners")
    assert re.search(r'badge-bad">expires in 2d 23h', page), page


def test_an_unwritable_upload_dir_changes_nothing(broker_process, pki, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the upload folder should be")
    broker = broker_process(broker_config(pki, blocker), token=TOKEN)
    session = logged_in(broker)
    _, _, page = session.get(SSL_PAGE)
    new = pki.ca.issue("broker-new", server=True)
    status, _, body = session.post_multipart(SSL_PAGE, DEFAULT_FIELDS + [("csrf", csrf_of(page)), ("verify", "on")],
                                             {"certfile": new.cert_pem(), "keyfile": new.key_pem()})
    assert status == 400 and "cannot write the uploaded files" in body
    assert ssl_options(broker)["verify"] == "verify_none"
    assert tls_probe(broker.port("ssl:default"), pki).fingerprint == pki.server.fingerprint


def test_the_wss_listener_has_the_same_form(broker_process, pki, tmp_path):
    wss = f"""
listeners.wss.default {{
  bind = "127.0.0.1:0"
  ssl_options {{ certfile = "{pki.dir / 'server.crt'}", keyfile = "{pki.dir / 'server.key'}" }}
}}
"""
    broker = broker_process(broker_config(pki, tmp_path / "up") + wss, token=TOKEN)
    session = logged_in(broker)
    _, _, listeners = session.get("/dashboard/listeners")
    assert "wss:default" in listeners and "WSS" in listeners
    page_path = "/dashboard/listeners/wss%3Adefault"
    _, _, page = session.get(page_path)
    assert 'id="ssl-form"' in page
    new = pki.ca.issue("wss-after", server=True, sans=["localhost"])
    status, _, body = session.post_multipart(page_path, DEFAULT_FIELDS + [("csrf", csrf_of(page))],
                                             {"certfile": new.cert_pem(), "keyfile": new.key_pem()})
    assert status == 303, body
    assert tls_probe(broker.port("wss:default"), pki).fingerprint == new.fingerprint
    # The ssl listener next to it still serves its own certificate.
    assert tls_probe(broker.port("ssl:default"), pki).fingerprint == pki.server.fingerprint
