"""The HTTP authenticator: ask a service whether a client may connect (EMQX's HTTP authenticator, simplified).

Each CONNECT not answered from the cache becomes a ``POST <url>`` with a JSON body::

    {"clientid": ..., "username": ..., "password": ..., "peerhost": ..., "listener": ..., "proto_ver": ...,
     "cert_common_name": ...}

A 200 answer with ``{"result": "allow" | "deny" | "ignore"}`` decides; 204 means allow; any other status, a
body that does not parse, a timeout or a connection error means ``ignore`` (the chain goes on) and is logged.
Allow and deny answers are cached for ``cache_ttl`` in a bounded LRU keyed by a digest of the credentials, so
the service is not asked again for every reconnect; at most ``pool_size`` requests are in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict

from ..auth import ALLOW, DENY, IGNORE, AuthResult, ConnectInfo
from ..config.model import HttpAuthn
from ..mqtt import reason_codes as rc

log = logging.getLogger("wharf_broker.authn")


class TtlCache:
    """A bounded LRU whose entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, max_size: int, ttl: float, clock=time.monotonic) -> None:
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict = OrderedDict()

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if self.max_size <= 0 or self.ttl <= 0:
            return
        self._entries[key] = (value, self._clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class HttpAuthenticator:
    name = "http"

    def __init__(self, config: HttpAuthn) -> None:
        self.url = config.url
        self.timeout = config.request_timeout
        self.connect_timeout = config.connect_timeout
        self.cache = TtlCache(config.cache_max_size, config.cache_ttl)
        self._slots = asyncio.Semaphore(config.pool_size)
        self._pepper = os.urandom(16)
        self._session = None

    def _session_now(self):
        if self._session is None:
            import aiohttp
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=self.timeout, sock_connect=self.connect_timeout))
        return self._session

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reload(self) -> bool:
        self.cache.clear()
        return True

    def _key(self, info: ConnectInfo, cert_cn: str | None) -> bytes:
        digest = hashlib.sha256(self._pepper)
        for part in (info.client_id, info.username, info.listener_id, info.peer[0] if info.peer else "", cert_cn):
            digest.update(repr(part).encode())
        digest.update(info.password or b"")
        return digest.digest()

    async def authenticate(self, info: ConnectInfo) -> AuthResult:
        cert_cn = getattr(info, "cert_common_name", None)
        key = self._key(info, cert_cn)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        body = {"clientid": info.client_id, "username": info.username,
                "password": (info.password or b"").decode("utf-8", "replace"),
                "peerhost": info.peer[0] if info.peer else None, "listener": info.listener_id,
                "proto_ver": info.protocol_version, "cert_common_name": cert_cn}
        import aiohttp
        decision: str | None
        try:
            async with self._slots:
                async with self._session_now().post(self.url, json=body) as response:
                    if response.status == 204:
                        decision = ALLOW
                    elif response.status == 200:
                        answer = await response.json(content_type=None)
                        decision = answer.get("result") if isinstance(answer, dict) else None
                    else:
                        log.warning("HTTP authenticator: %s answered %d for client %r: ignored", self.url,
                                    response.status, info.client_id)
                        return AuthResult.ignore()
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            log.warning("HTTP authenticator: %s failed for client %r: %s: ignored", self.url, info.client_id,
                        type(error).__name__)
            return AuthResult.ignore()
        if decision == ALLOW:
            result = AuthResult.allow(source=self.name)
        elif decision == DENY:
            result = AuthResult.deny(rc.NOT_AUTHORIZED, "refused by the HTTP authenticator")
        else:
            if decision != IGNORE:
                log.warning("HTTP authenticator: %s gave no result for client %r: ignored", self.url,
                            info.client_id)
            return AuthResult.ignore()
        self.cache.put(key, result)
        return result
