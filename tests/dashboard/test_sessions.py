"""Unit tests for Dashboard sessions, login checks and password hashes."""

from __future__ import annotations

import datetime as dt

from wharf_broker.admin.auth import TokenSource
from wharf_broker.config.model import Dashboard
from wharf_broker.dashboard import markup
from wharf_broker.dashboard.passwords import check_hash_format, hash_password, verify_password
from wharf_broker.dashboard.sessions import MAX_FAILURES, LoginGate, SessionStore, csrf_ok


def test_sessions_end_after_the_idle_timeout_and_can_be_dropped():
    store = SessionStore(idle_timeout=60)
    session = store.create("admin")
    assert store.get(session.id) is session
    session.seen -= 61
    assert store.get(session.id) is None
    other = store.create("admin")
    assert other.id != session.id and other.csrf != session.csrf
    store.drop(other.id)
    assert store.get(other.id) is None
    assert store.get("") is None and store.get("made-up") is None


def test_csrf_compare():
    assert csrf_ok("abc", "abc")
    assert not csrf_ok("abc", "abd") and not csrf_ok("abc", "") and not csrf_ok("abc", None)


def gate(**settings) -> LoginGate:
    dashboard = Dashboard(**settings)
    return LoginGate(dashboard, TokenSource(dashboard))


def test_login_checks():
    both = gate(token="tok", default_password="pw")
    assert both.check("anyone", "tok") == "anyone"
    assert both.check("", "tok") == "token"
    assert both.check("admin", "pw") == "admin"
    assert both.check("root", "pw") is None and both.check("admin", "PW") is None
    nothing = gate()
    assert not nothing.password_login and not nothing.token_login
    assert nothing.check("admin", "") is None  # an empty password never logs in
    hashed = gate(default_username="ops", default_password="old", default_password_hash=hash_password("new", 1000))
    assert hashed.check("ops", "new") == "ops" and hashed.check("ops", "old") is None


def test_failed_logins_are_counted_per_address_within_a_window():
    login = gate(default_password="pw")
    for _ in range(MAX_FAILURES):
        assert not login.throttled("10.0.0.1")
        login.failed("10.0.0.1")
    assert login.throttled("10.0.0.1")
    assert not login.throttled("10.0.0.2")
    assert not login.throttled("10.0.0.1", now=login.failures["10.0.0.1"][-1] + 301)


def test_password_hashes():
    encoded = hash_password("s3cret", iterations=1000, salt=b"0123456789abcdef")
    assert encoded.startswith("pbkdf2_sha256$1000$")
    assert check_hash_format(encoded) is None
    assert verify_password("s3cret", encoded) and not verify_password("s3cret ", encoded)
    for bad in ("", "md5$1$a$b", "pbkdf2_sha256$many$a$b", "pbkdf2_sha256$0$a$b", "pbkdf2_sha256$10$a"):
        assert check_hash_format(bad) is not None
        assert not verify_password("s3cret", bad)


def test_expiry_highlight():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert "badge-good" in markup.expiry(now + dt.timedelta(days=90), now)
    assert "badge-warn" in markup.expiry(now + dt.timedelta(days=20), now)
    assert "badge-bad" in markup.expiry(now + dt.timedelta(days=3), now)
    assert "expired" in markup.expiry(now - dt.timedelta(seconds=1), now)
    assert markup.expiry(None) == "—"


def test_markup_escapes_what_it_is_given():
    assert markup.h('<script>"x"</script>') == "&lt;script&gt;&quot;x&quot;&lt;/script&gt;"
    assert "<b>" not in markup.subject("CN=<b>evil</b>,O=x")
    assert markup.fingerprint("ab" * 32).count(":<wbr>") == 31
