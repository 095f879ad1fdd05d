"""CRLs from client certificates' distribution points, fetched over HTTP, cached and refreshed (EMQX's crl_cache).

The stdlib has no verify callback, so a distribution point cannot be fetched *during* the handshake; the
check runs right after it, before the connection reaches MQTT, with the same visible result (the connection
is refused). It fails closed: a CRL that is not cached and cannot be fetched, or whose signature does not
verify against a CA in ``cacertfile``, refuses the client. Cached CRLs are refreshed in the background every
``refresh_interval``; a CRL past its nextUpdate that cannot be refreshed is dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import aiohttp
from cryptography import x509

from ..config.model import CrlCache as CrlCacheConfig
from ..tasks import cancel_and_wait

log = logging.getLogger("wharf.tls")


class CrlUnavailable(Exception):
    pass


@dataclass
class _Entry:
    crl: x509.CertificateRevocationList
    fetched_at: float


def distribution_points(cert: x509.Certificate) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(("http://",
                                                                                                    "https://")):
                urls.append(name.value)
    return urls


def _parse_crl(body: bytes) -> x509.CertificateRevocationList:
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(body)
        return x509.load_der_x509_crl(body)
    except ValueError as exc:
        raise CrlUnavailable(f"not a CRL: {exc}") from None


class CrlDistributionCache:
    """One per event loop, shared by every listener (like EMQX's global ``crl_cache``)."""

    _shared: dict[int, "CrlDistributionCache"] = {}

    def __init__(self, config: CrlCacheConfig) -> None:
        self.config = config
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task | None = None
        self._users = 0
        self._loop = asyncio.get_running_loop()

    @classmethod
    def shared(cls, config: CrlCacheConfig | "CrlDistributionCache") -> "CrlDistributionCache":
        if isinstance(config, CrlDistributionCache):
            return config
        loop = asyncio.get_running_loop()
        cache = cls._shared.get(id(loop))
        if cache is None or cache._loop is not loop:
            cache = cls._shared[id(loop)] = cls(config)
        return cache

    def acquire(self) -> None:
        self._users += 1
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            await self.close()

    async def close(self) -> None:
        await cancel_and_wait(self._refresher)
        self._refresher = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        for loop_id, cache in list(self._shared.items()):
            if cache is self:
                del self._shared[loop_id]

    def status(self) -> dict:
        now = time.time()
        return {"urls": {url: {"age_s": round(now - e.fetched_at, 1),
                               "next_update": e.crl.next_update_utc.isoformat() if e.crl.next_update_utc else None}
                         for url, e in self._entries.items()},
                "errors": dict(self._errors)}

    async def _download(self, url: str) -> x509.CertificateRevocationList:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.http_timeout))
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise CrlUnavailable(f"HTTP {response.status}")
                body = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise CrlUnavailable(f"{type(exc).__name__}: {exc}") from None
        return _parse_crl(body)

    async def _fetch(self, url: str) -> x509.CertificateRevocationList:
        """Download ``url`` once even when many handshakes ask for it at the same time."""
        pending = self._inflight.get(url)
        if pending is None:
            pending = self._inflight[url] = asyncio.ensure_future(self._download(url))
            pending.add_done_callback(lambda _f: self._inflight.pop(url, None))
        try:
            crl = await asyncio.shield(pending)
        except CrlUnavailable as exc:
            if self._errors.get(url) != str(exc):
                log.warning("TLS: CRL %s unavailable: %s", url, exc)
            self._errors[url] = str(exc)
            raise
        self._errors.pop(url, None)
        self._entries[url] = _Entry(crl, time.time())
        self._entries.move_to_end(url)
        while len(self._entries) > max(1, self.config.capacity):
            self._entries.popitem(last=False)
        return crl

    def cached(self, url: str) -> x509.CertificateRevocationList | None:
        entry = self._entries.get(url)
        if entry is None:
            return None
        next_update = entry.crl.next_update_utc
        if next_update is not None and next_update < dt.datetime.now(dt.timezone.utc):
            return None  # stale: never judge with it
        return entry.crl

    async def get(self, url: str) -> x509.CertificateRevocationList:
        crl = self.cached(url)
        if crl is None:
            crl = await self._fetch(url)
        return crl

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval)
            for url in list(self._entries):
                try:
                    await self._fetch(url)
                except CrlUnavailable:
                    entry = self._entries.get(url)
                    if entry is not None and self.cached(url) is None:
                        del self._entries[url]  # stale and unrefreshable: fail closed from now on

    def verdict_cached(self, cert: x509.Certificate, issuers: Iterable[x509.Certificate]) -> str | None | bool:
        """Like ``verdict`` but without network: False when a URL is not cached (call ``verdict``)."""
        urls = distribution_points(cert)
        crls = []
        for url in urls:
            crl = self.cached(url)
            if crl is None:
                return False
            crls.append(crl)
        return _judge(cert, crls, issuers)

    async def verdict(self, cert: x509.Certificate, issuers: Iterable[x509.Certificate]) -> str | None:
        """None when ``cert`` is not revoked; else the refusal reason (crl_revoked, crl_unavailable)."""
        crls = []
        for url in distribution_points(cert):
            try:
                crls.append(await self.get(url))
            except CrlUnavailable:
                return "crl_unavailable"
        return _judge(cert, crls, issuers)


def _judge(cert: x509.Certificate, crls: list, issuers: Iterable[x509.Certificate]) -> str | None:
    issuers = [i for i in issuers if i.subject == cert.issuer]
    trusted = [crl for crl in crls if crl.issuer == cert.issuer
               and any(crl.is_signature_valid(i.public_key()) for i in issuers)]
    if not trusted:
        return "crl_unavailable"
    for crl in trusted:
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return "crl_revoked"
    return None
