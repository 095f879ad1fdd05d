"""Authentication: a chain of hooks asked in order, with EMQX's chain semantics.

Each hook answers a ``ConnectInfo`` with ``allow``, ``deny`` or ``ignore``. The first allow or deny decides;
when every hook ignores (or there are none), ``authentication.allow_anonymous`` decides.

A hook is any object with ``async authenticate(info) -> AuthResult``. For X.509 listeners configured with
``peer_cert_as_username`` / ``peer_cert_as_clientid``, the client's username / client id are taken from its
certificate before the chain runs (``identity_from_certificate``).

A client whose TLS handshake ran on a pre-shared key gets its PSK identity as its username (mosquitto's
``use_identity_as_username``) and is authenticated by the key itself: the chain is not asked, so no password
authenticator can refuse it for lacking a password.

With a ``throttle`` (``authn.throttle.LoginThrottler``), a login that presents credentials is first checked
against the backoff of its source address and user name: while either backs off, or already has too many checks
in flight, the CONNECT is refused after ``refusal_delay`` with 0x9F "connection rate exceeded" and no hook runs.
Afterwards a "bad user name or password" denial counts as a failure of both, an allow clears both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from .mqtt import reason_codes as rc

ALLOW = "allow"
DENY = "deny"
IGNORE = "ignore"


@dataclass
class ConnectInfo:
    client_id: str
    username: str | None
    password: bytes | None
    listener_id: str
    peer: tuple | None
    protocol_version: int
    # The TLS peer identity (``wharf_broker.tls.PeerIdentity``) when the client presented a certificate.
    peer_identity: Any = None
    # The client certificate's CN: from the TLS handshake, or from a PROXY v2 header's TLS TLV.
    cert_common_name: str | None = None
    # The PSK identity when the TLS handshake really used that pre-shared key (then also the username).
    psk_identity: str | None = None


@dataclass(frozen=True)
class AuthResult:
    decision: str
    # The 5.0 CONNACK reason code for a denial (mapped to a 3.1.1 return code for older clients).
    reason_code: int = rc.SUCCESS
    reason: str = ""
    attributes: dict = field(default_factory=dict)

    @classmethod
    def allow(cls, **attributes) -> "AuthResult":
        return cls(ALLOW, rc.SUCCESS, "", attributes)

    @classmethod
    def deny(cls, reason_code: int = rc.NOT_AUTHORIZED, reason: str = "") -> "AuthResult":
        return cls(DENY, reason_code, reason)

    @classmethod
    def ignore(cls) -> "AuthResult":
        return cls(IGNORE)

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW


class Authenticator(Protocol):
    async def authenticate(self, info: ConnectInfo) -> AuthResult: ...


class AuthChain:
    def __init__(self, allow_anonymous: bool = True, hooks: list[Authenticator] | None = None,
                 throttle: Any = None) -> None:
        self.allow_anonymous = allow_anonymous
        self.hooks: list[Authenticator] = list(hooks or ())
        self.throttle = throttle

    def add(self, hook: Authenticator) -> None:
        self.hooks.append(hook)

    def fallback(self, info: ConnectInfo) -> AuthResult:
        """The decision when no hook decided."""
        if info.psk_identity is not None:
            return AuthResult.allow(source="psk")
        if self.allow_anonymous:
            return AuthResult.allow(anonymous=True)
        if info.username is not None or info.password is not None:
            return AuthResult.deny(rc.BAD_USER_NAME_OR_PASSWORD, "no authenticator accepted the credentials")
        return AuthResult.deny(rc.NOT_AUTHORIZED, "anonymous access is disabled")

    async def authenticate(self, info: ConnectInfo) -> AuthResult:
        if info.psk_identity is not None:  # the key already proved who it is
            return self.fallback(info)
        throttle = self.throttle
        if throttle is None or (info.username is None and info.password is None):
            return await self._ask(info)
        address = info.peer[0] if info.peer else None
        wait = throttle.admit(address, info.username)
        if wait:
            delay = min(wait, throttle.refusal_delay) if wait > 0 else throttle.refusal_delay
            if delay > 0:
                await asyncio.sleep(delay)
            return AuthResult.deny(rc.CONNECTION_RATE_EXCEEDED,
                                   f"too many failed logins, retry in {wait:.0f}s" if wait >= 1 else
                                   "too many failed logins, retry in a moment")
        try:
            result = await self._ask(info)
        finally:
            throttle.release(address, info.username)
        if result.allowed:
            throttle.succeeded(address, info.username)
        elif result.reason_code == rc.BAD_USER_NAME_OR_PASSWORD:
            throttle.failed(address, info.username)
        return result

    async def _ask(self, info: ConnectInfo) -> AuthResult:
        for hook in self.hooks:
            result = await hook.authenticate(info)
            if result.decision != IGNORE:
                return result
        return self.fallback(info)


_peer_identity_fn: Any = None


def peer_identity(transport) -> Any:
    """The TLS layer's identity of the peer behind ``transport``, or None (plain TCP, no certificate, or no
    TLS layer installed)."""
    global _peer_identity_fn
    if _peer_identity_fn is None:
        if transport.get_extra_info("ssl_object") is None and transport.get_extra_info("wharf_peer_identity") is None:
            return None  # not TLS: no need to import the TLS layer for it (about half a second of CPU)
        try:
            from .tls import peer_identity  # the TLS layer is optional for this module
        except ImportError:
            _peer_identity_fn = False
        else:
            _peer_identity_fn = peer_identity
    if not _peer_identity_fn:
        return None
    return _peer_identity_fn(transport)


def identity_from_certificate(identity, mode: str) -> str | None:
    """The username or client id a certificate yields under ``peer_cert_as_*`` = ``mode`` (None if disabled
    or not available). ``crt`` (the DER bytes) is rendered as hex, since usernames and client ids are text
    here. Raises ``ValueError`` for a subject the TLS layer refuses (control characters)."""
    if identity is None or mode == "disabled":
        return None
    value = identity.as_identity(mode)
    if isinstance(value, bytes):
        value = value.hex()
    return value or None
