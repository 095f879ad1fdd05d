"""Unit tests for Dashboard sessions, login checks and password hashes."""

from __future__ import annotations

import datetime as dt

from wharf_broker.admin.auth import TokenSource
from wharf_broker.config.model import Dashboard
from wharf_broker.dashboard import markup
from wharf_broker.dashboard.passwords import check_hash_format, hash_password, verify_password
from wharf_broker.config.model import DashboardLoginThrottle
from wharf_broker.dashboard.sessions import MAX_TRACKED, LoginGate, LoginThrottle, SessionStore, csrf_ok


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


def throttle(**settings) -> LoginThrottle:
    return LoginThrottle(DashboardLoginThrottle(**settings), clock=lambda: 0.0)


def test_backoff_per_user_name_and_address_grows_and_is_capped():
    limiter = throttle(max_failures_per_user=3, max_failures_per_address=100, initial_backoff=1.0, max_backoff=8.0)
    now = 1000.0
    for _ in range(2):
        limiter.failed("admin", "10.0.0.1", now)
        assert limiter.wait("admin", "10.0.0.1", now) is None  # below the threshold: no wait at all
    waits = []
    for _ in range(6):
        limiter.failed("admin", "10.0.0.1", now)
        scope, seconds = limiter.wait("admin", "10.0.0.1", now)
        assert scope == "user"
        waits.append(seconds)
        now += seconds  # the attacker (or the admin) comes back exactly when the wait ends
        assert limiter.wait("admin", "10.0.0.1", now) is None  # never longer than the current backoff
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_attempts_during_a_wait_do_not_extend_it():
    limiter = throttle(max_failures_per_user=1, initial_backoff=10.0, max_backoff=100.0)
    limiter.failed("admin", "10.0.0.1", 0.0)
    for t in range(0, 10):
        assert limiter.wait("admin", "10.0.0.1", float(t)) == ("user", 10.0 - t)  # refused, not counted
    assert limiter.wait("admin", "10.0.0.1", 10.0) is None


def test_one_names_failures_leave_other_names_and_addresses_alone():
    limiter = throttle(max_failures_per_user=5, max_failures_per_address=20)
    for _ in range(10):
        limiter.failed("admin", "127.0.0.1", 0.0)
    assert limiter.wait("admin", "127.0.0.1", 0.5)[0] == "user"
    assert limiter.wait("ADMIN", "127.0.0.1", 0.5)[0] == "user"  # the same name in other case
    assert limiter.wait("ops", "127.0.0.1", 0.5) is None  # another name from the same address
    assert limiter.wait("admin", "10.0.0.2", 0.5) is None  # the same name from another address


def test_spraying_user_names_from_one_address_throttles_the_address():
    limiter = throttle(max_failures_per_user=5, max_failures_per_address=20, initial_backoff=2.0)
    for index in range(20):
        assert limiter.wait(f"user{index}", "192.0.2.1", 0.0) is None
        limiter.failed(f"user{index}", "192.0.2.1", 0.0)
    assert limiter.wait("anyone", "192.0.2.1", 1.0) == ("address", 1.0)
    assert limiter.wait("anyone", "192.0.2.1", 2.0) is None
    assert limiter.wait("anyone", "192.0.2.2", 1.0) is None


def test_success_clears_and_old_failures_are_forgotten():
    limiter = throttle(max_failures_per_user=2, forget_after=60.0)
    limiter.failed("admin", "10.0.0.1", 0.0)
    limiter.failed("admin", "10.0.0.1", 100.0)  # the first one is forgotten: still one failure
    assert limiter.wait("admin", "10.0.0.1", 100.0) is None
    limiter.failed("admin", "10.0.0.1", 101.0)
    assert limiter.wait("admin", "10.0.0.1", 101.0) is not None
    limiter.succeeded("admin", "10.0.0.1")
    assert len(limiter) == 0


def test_records_are_bounded():
    limiter = throttle(max_failures_per_user=1, initial_backoff=1000.0, max_backoff=1000.0)
    limiter.failed("admin", "10.9.9.9", 0.0)
    for index in range(MAX_TRACKED):
        limiter.failed("x", f"10.{index // 65536}.{index // 256 % 256}.{index % 256}", 1.0)
    assert len(limiter) <= MAX_TRACKED
    last = MAX_TRACKED - 1
    assert limiter.wait("x", f"10.{last // 65536}.{last // 256 % 256}.{last % 256}", 1.0) is not None  # kept
    assert limiter.wait("admin", "10.9.9.9", 1.0) is None  # the least recently failed went first


def test_the_gate_uses_the_configured_throttle():
    login = gate(default_password="pw")
    assert login.throttle.settings.max_failures_per_user == 5 and login.throttle.settings.max_backoff == 60.0


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
