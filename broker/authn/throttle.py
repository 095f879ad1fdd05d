"""Login throttle (``authentication.login_throttle``): exponential backoff of failed logins, per source
address and per user name.

A failed login is one the chain denied with "bad user name or password". Each source address and each user
name has a record of consecutive failures; once a record has more than ``allowed_failures`` of them it is
blocked for ``initial_backoff`` x 2^(failures - allowed_failures - 1), at most ``max_backoff``. A login whose
address or user name is blocked is refused at once, before any authenticator runs (so no password hash is
computed): 5.0 reason 0x9F "connection rate exceeded", 3.1.1 "server unavailable". Refusals while blocked do
not extend the block. A successful login clears the records of its address and its user name; a record
without a failure for ``forget_after`` starts over.

Bursts: failures are only known once their hashes are computed, so a burst of wrong passwords from one
address would all be hashed before the next failure counts. ``max_pending_checks`` caps the logins being
checked at the same time for an address / user name that has failed lately (one with no recent failure is not
capped: many devices behind one NAT address, or sharing one user name, reconnect together after an outage);
more are refused the same way (0x9F). The first burst of a fresh key is bounded by the hash pool's queue.

A refusal is answered after ``refusal_delay`` (at most the rest of the backoff): refused at once, an attacker
that waits for its CONNACK reconnects hundreds of times a second, and that churn costs the event loop more
than the refusals save.

Lockout as denial of service: an attacker who keeps failing as user X keeps X blocked, but each block is at
most ``max_backoff`` long and the real X, from any address, gets through as soon as a block ends and the
next attempt is its own. ``by_username = false`` removes that lever (then only addresses are throttled, and a
botnet spread over many addresses is slowed only by the bounded hash executor).

Memory is bounded: at most ``max_tracked`` records of each kind (least recently failed forgotten first).
Counted in ``wharf_authn_throttled_total{key}`` (logins refused while blocked) and
``wharf_authn_backoffs_total{key}`` (blocks started).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from ..config.model import LoginThrottle
from ..metrics import REGISTRY, Registry

log = logging.getLogger("wharf_broker.authn")


class _Records:
    """Failures per key: key -> [consecutive failures, blocked until, last failure, checks in flight]."""

    __slots__ = ("kind", "config", "entries", "throttled", "backoffs")

    def __init__(self, kind: str, config: LoginThrottle, throttled, backoffs) -> None:
        self.kind = kind
        self.config = config
        self.entries: OrderedDict[str, list] = OrderedDict()
        self.throttled = throttled
        self.backoffs = backoffs

    def blocked_for(self, key: str, now: float) -> float:
        """Seconds this key still backs off; -1 when it is not blocked but has too many checks in flight."""
        entry = self.entries.get(key)
        if entry is None:
            return 0.0
        if entry[1] > now:
            return entry[1] - now
        # Only a key that has failed lately is held to ``max_pending_checks``: a fleet behind one address (NAT, a
        # gateway) or sharing one user name reconnects all at once after an outage and must not be refused.
        return -1.0 if entry[0] and entry[3] >= self.config.max_pending_checks else 0.0

    def begin(self, key: str, now: float) -> None:
        entries = self.entries
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = [0, 0.0, now, 0]
            self._bound()
        entry[3] += 1

    def end(self, key: str) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry[3] > 0:
            entry[3] -= 1

    def _bound(self) -> None:
        entries = self.entries
        while len(entries) > self.config.max_tracked:
            entries.popitem(last=False)

    def failed(self, key: str, now: float) -> float:
        """Count one failure; returns the block it starts (0 for none)."""
        config = self.config
        entries = self.entries
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = [0, 0.0, now, 0]
        elif now - entry[2] > config.forget_after:
            entry[0] = 0
        entries.move_to_end(key)
        entry[0] += 1
        entry[2] = now
        self._bound()
        over = entry[0] - config.allowed_failures
        if over <= 0:
            return 0.0
        backoff = min(config.initial_backoff * 2.0 ** min(over - 1, 60), config.max_backoff)
        entry[1] = now + backoff
        self.backoffs.inc()
        return backoff

    def succeeded(self, key: str) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry[0], entry[1] = 0, 0.0


class LoginThrottler:
    def __init__(self, config: LoginThrottle, registry: Registry = REGISTRY, clock=time.monotonic) -> None:
        self.enabled = config.enable
        self.refusal_delay = config.refusal_delay
        self._clock = clock
        throttled = registry.counter("wharf_authn_throttled_total",
                                     "Logins refused without a password check while their source address or "
                                     "user name was backing off after failures, by key", ("key",))
        backoffs = registry.counter("wharf_authn_backoffs_total",
                                    "Backoffs started after repeated failed logins, by key", ("key",))
        self.kinds: list[tuple[str, _Records]] = []
        self.addresses = _Records("address", config, throttled.labels(key="address"), backoffs.labels(key="address"))
        self.usernames = _Records("username", config, throttled.labels(key="username"),
                                  backoffs.labels(key="username"))
        if config.by_address:
            self.kinds.append(("address", self.addresses))
        if config.by_username:
            self.kinds.append(("username", self.usernames))

    @staticmethod
    def _keys(address: str | None, username: str | None) -> dict[str, str | None]:
        return {"address": address, "username": username}

    def admit(self, address: str | None, username: str | None) -> float:
        """0 when a login from ``address`` as ``username`` may be checked now (then ``release`` must follow the
        check); otherwise the seconds it still backs off (-1: too many of its checks in flight), counted."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        keys = self._keys(address, username)
        for kind, records in self.kinds:
            key = keys[kind]
            if key is not None:
                wait = records.blocked_for(key, now)
                if wait:
                    records.throttled.inc()
                    return wait
        for kind, records in self.kinds:
            key = keys[kind]
            if key is not None:
                records.begin(key, now)
        return 0.0

    def release(self, address: str | None, username: str | None) -> None:
        if not self.enabled:
            return
        keys = self._keys(address, username)
        for kind, records in self.kinds:
            key = keys[kind]
            if key is not None:
                records.end(key)

    def failed(self, address: str | None, username: str | None) -> None:
        if not self.enabled:
            return
        now = self._clock()
        keys = self._keys(address, username)
        for kind, records in self.kinds:
            key = keys[kind]
            if key is None:
                continue
            backoff = records.failed(key, now)
            if backoff:
                log.warning("failed logins: %s %r backs off for %.1fs after %d failures", kind, key, backoff,
                            records.entries[key][0])

    def succeeded(self, address: str | None, username: str | None) -> None:
        if not self.enabled:
            return
        keys = self._keys(address, username)
        for kind, records in self.kinds:
            key = keys[kind]
            if key is not None:
                records.succeeded(key)
