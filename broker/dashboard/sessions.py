"""Dashboard logins and sessions: who may log in, the session cookie, CSRF tokens, throttled failures.

Sessions live in memory (a restart logs everyone out). The cookie holds only a random session id (HttpOnly,
SameSite=Strict, path ``/dashboard``); every state-changing form carries the session's CSRF token, compared in
constant time. Nothing secret ever appears in a URL.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from ..admin.auth import TokenSource
from ..config.model import Dashboard
from .passwords import verify_password

COOKIE = "wharf_session"
LOGIN_COOKIE = "wharf_login"  # double-submit token of the login form (there is no session yet)
MAX_SESSIONS = 1000
MAX_SESSION_AGE = 12 * 3600.0
# Failed logins per client address before it must wait; the window also bounds how long it waits.
MAX_FAILURES = 5
FAILURE_WINDOW = 300.0


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    created: float
    seen: float
    flash: tuple[str, str] | None = None  # (message, tone) shown once on the next page


@dataclass
class LoginGate:
    """Checks credentials: the admin token (any user name), or ``default_username`` with its password."""

    dashboard: Dashboard
    tokens: TokenSource
    failures: dict[str, list[float]] = field(default_factory=dict)

    @property
    def password_login(self) -> bool:
        return bool(self.dashboard.default_password_hash or self.dashboard.default_password)

    @property
    def token_login(self) -> bool:
        return self.tokens.configured

    def throttled(self, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        recent = [t for t in self.failures.get(address, []) if now - t < FAILURE_WINDOW]
        self.failures[address] = recent
        if not recent:
            self.failures.pop(address, None)
        return len(recent) >= MAX_FAILURES

    def failed(self, address: str) -> None:
        if len(self.failures) > 10_000:  # a flood of addresses must not grow this without bound
            self.failures.clear()
        self.failures.setdefault(address, []).append(time.monotonic())

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
