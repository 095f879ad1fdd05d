"""Dashboard logins and sessions: who may log in, the session cookie, CSRF tokens, throttled failures.

Sessions live in memory (a restart logs everyone out). The cookie holds only a random session id (HttpOnly,
SameSite=Strict, path ``/dashboard``); every state-changing form carries the session's CSRF token, compared in
constant time. Nothing secret ever appears in a URL.

Failed logins (``LoginThrottle``, ``dashboard.login_throttle``) are throttled per (user name, address) and per
address, with exponential backoff: after ``max_failures_per_user`` failures of one name from one address, that
pair waits ``initial_backoff``, doubled at each further failure up to ``max_backoff``; the address as a whole waits
the same way after ``max_failures_per_address`` failures (token logins take any user name). An attempt during a
wait is refused (429, ``Retry-After``) without looking at the password and without adding a failure, so a wait is
never longer than the current backoff and hammering does not extend it; a correct login after it succeeds and
clears the pair's and the address's record. Failures are forgotten ``forget_after`` after the last one; at most
``MAX_TRACKED`` records are kept (the stalest go first).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from .. import metrics
from ..admin.auth import TokenSource
from ..config.model import Dashboard, DashboardLoginThrottle
from .passwords import verify_password

COOKIE = "wharf_session"
LOGIN_COOKIE = "wharf_login"  # double-submit token of the login form (there is no session yet)
MAX_SESSIONS = 1000
MAX_SESSION_AGE = 12 * 3600.0
MAX_TRACKED = 10_000  # failure records (pairs and addresses) kept at most
MAX_NAME_KEY = 128  # user names are throttled by their first characters, case-folded

LOGINS = metrics.REGISTRY.counter(
    "wharf_dashboard_logins_total",
    "Dashboard login attempts (result: ok, failed, throttled_user, throttled_address)", ("result",))


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    created: float
    seen: float
    flash: tuple[str, str] | None = None  # (message, tone) shown once on the next page


class _Record:
    __slots__ = ("failures", "last", "blocked_until")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0
        self.blocked_until = 0.0


class LoginThrottle:
    """Exponential backoff per (user name, address) and per address; see the module docstring."""

    def __init__(self, settings: DashboardLoginThrottle, clock=time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._records: dict[tuple[str, str] | str, _Record] = {}

    @staticmethod
    def _pair(username: str, address: str) -> tuple[str, str]:
        return username.casefold()[:MAX_NAME_KEY], address

    def wait(self, username: str, address: str, now: float | None = None) -> tuple[str, float] | None:
        """(``"user"`` or ``"address"``, seconds left) when this login must wait, else None."""
        now = self.clock() if now is None else now
        for scope, key in (("address", address), ("user", self._pair(username, address))):
            record = self._records.get(key)
            if record is not None and now < record.blocked_until:
                return scope, record.blocked_until - now
        return None

    def failed(self, username: str, address: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        settings = self.settings
        self._bump(self._pair(username, address), settings.max_failures_per_user, now)
        self._bump(address, settings.max_failures_per_address, now)

    def succeeded(self, username: str, address: str) -> None:
        self._records.pop(self._pair(username, address), None)
        self._records.pop(address, None)

    def _bump(self, key: tuple[str, str] | str, allowed: int, now: float) -> None:
        settings = self.settings
        record = self._records.pop(key, None)  # re-inserted last: the dict stays ordered by last failure
        if record is None:
            self._make_room(now)
            record = _Record()
        elif now - record.last > settings.forget_after:
            record.failures = 0
        record.failures += 1
        record.last = now
        if record.failures >= allowed:
            exponent = min(record.failures - allowed, 64)
            record.blocked_until = now + min(settings.initial_backoff * 2 ** exponent, settings.max_backoff)
        self._records[key] = record

    def _make_room(self, now: float) -> None:
        if len(self._records) < MAX_TRACKED:
            return
        forget_after = self.settings.forget_after
        for key in [k for k, r in self._records.items() if now - r.last > forget_after and now >= r.blocked_until]:
            del self._records[key]
        # Still (nearly) full: the least recently failed go, a tenth at a time, so that a flood of new addresses
        # costs one scan per thousand failures rather than one per failure.
        target = MAX_TRACKED * 9 // 10
        while len(self._records) > target:
            del self._records[next(iter(self._records))]

    def __len__(self) -> int:
        return len(self._records)


@dataclass
class LoginGate:
    """Checks credentials: the admin token (any user name), or ``default_username`` with its password."""

    dashboard: Dashboard
    tokens: TokenSource
    throttle: LoginThrottle = field(init=False)

    def __post_init__(self) -> None:
        self.throttle = LoginThrottle(self.dashboard.login_throttle)

    @property
    def password_login(self) -> bool:
        return bool(self.dashboard.default_password_hash or self.dashboard.default_password)

    @property
    def token_login(self) -> bool:
        return self.tokens.configured

    def check(self, username: str, password: str) -> str | None:
        """The logged-in user's name, or None."""
        token = self.tokens.current() if self.token_login else b""
        if token and hmac.compare_digest(password.encode(), token):
            return username or "token"
        if not self.password_login:
            return None
        user_ok = hmac.compare_digest(username.encode(), self.dashboard.default_username.encode())
        if self.dashboard.default_password_hash:
            password_ok = verify_password(password, self.dashboard.default_password_hash)
        else:
            password_ok = hmac.compare_digest(password.encode(), self.dashboard.default_password.encode())
        return self.dashboard.default_username if user_ok and password_ok else None


class SessionStore:
    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, Session] = {}

    def create(self, user: str) -> Session:
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.seen)
            del self._sessions[oldest.id]
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self.idle_timeout or now - session.created > MAX_SESSION_AGE:
            del self._sessions[session.id]
            return None
        session.seen = now
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for session in list(self._sessions.values()):
            if now - session.seen > self.idle_timeout or now - session.created > MAX_SESSION_AGE:
                del self._sessions[session.id]


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())  # type: ignore[union-attr]
