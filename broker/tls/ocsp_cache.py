"""OCSP stapling: fetch the served certificate's OCSP response, check it, keep it fresh, hand it to handshakes.

Unlike EMQX (which caches any HTTP 200 body), a response is only stapled after it proved itself: successful,
about our certificate (CertID), signed by the issuer or by a responder certificate the issuer delegated
OCSP signing to, and not past its nextUpdate. Refresh runs in the background every ``refresh_interval``
(retry after 5 s on failure); a staple past its nextUpdate is dropped rather than served.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..tasks import cancel_and_wait

log = logging.getLogger("wharf.tls")
RETRY_AFTER_ERROR = 5.0


class OcspError(Exception):
    pass


@dataclass(frozen=True)
class Staple:
    der: bytes
    status: str  # good | revoked | unknown
    this_update: dt.datetime
    next_update: dt.datetime | None
    fetched_at: dt.datetime

    def fresh(self, now: dt.datetime) -> bool:
        return self.next_update is None or now < self.next_update


def _verify_signature(signer: x509.Certificate, response: ocsp.OCSPResponse) -> bool:
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                       response.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
        else:
            key.verify(response.signature, response.tbs_response_bytes)
        return True
    except (InvalidSignature, TypeError, ValueError):
        return False


def check_response(der: bytes, leaf: x509.Certificate, issuer: x509.Certificate) -> Staple:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OcspError(f"not an OCSP response: {exc}") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"responder said {response.response_status.name}")
    if response.serial_number != leaf.serial_number:
        raise OcspError("response is about another certificate")
    issuer_key_hash = hashes.Hash(response.hash_algorithm)
    issuer_key_hash.update(issuer.public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.PKCS1)
                           if isinstance(issuer.public_key(), rsa.RSAPublicKey) else
                           issuer.public_key().public_bytes(serialization.Encoding.X962,
                                                            serialization.PublicFormat.UncompressedPoint))
    if response.issuer_key_hash != issuer_key_hash.finalize():
        raise OcspError("response names another issuer")
    signers = [issuer]
    for delegate in response.certificates:
        try:
            delegate.verify_directly_issued_by(issuer)
            usages = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usages:
            signers.append(delegate)
    if not any(_verify_signature(signer, response) for signer in signers):
        raise OcspError("response signature does not verify against the issuer")
    now = dt.datetime.now(dt.timezone.utc)
    if response.next_update_utc is not None and response.next_update_utc < now:
        raise OcspError("response is past its nextUpdate")
    return Staple(der=der, status=response.certificate_status.name.lower(), this_update=response.this_update_utc,
                  next_update=response.next_update_utc, fetched_at=now)


class OcspStapler:
    """Keeps the staple for the certificate a listener serves right now."""

    def __init__(self, listener_id: str, responder_url: str, refresh_interval: float, http_timeout: float,
                 current: Callable[[], tuple[x509.Certificate, x509.Certificate | None]]) -> None:
        self.listener_id = listener_id
        self.responder_url = responder_url
        self.refresh_interval = refresh_interval
        self.http_timeout = http_timeout
        self._current = current
        self._staples: dict[int, Staple] = {}  # by certificate serial
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self.last_error: str | None = None
        self.last_fetch_at: dt.datetime | None = None

    def staple_for(self, leaf: x509.Certificate) -> bytes:
        staple = self._staples.get(leaf.serial_number)
        if staple is None or not staple.fresh(dt.datetime.now(dt.timezone.utc)):
            return b""
        return staple.der

    async def fetch(self, leaf: x509.Certificate, issuer: x509.Certificate) -> Staple:
        request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
        body = request.public_bytes(serialization.Encoding.DER)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.http_timeout)) as session:
                async with session.post(self.responder_url, data=body,
                                        headers={"Content-Type": "application/ocsp-request"}) as response:
                    if response.status != 200:
                        raise OcspError(f"HTTP {response.status}")
                    der = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise OcspError(f"{type(exc).__name__}: {exc}") from None
        staple = check_response(der, leaf, issuer)
        self._staples = {leaf.serial_number: staple}
        self.last_fetch_at = staple.fetched_at
        self.last_error = None
        return staple

    async def refresh_now(self) -> Staple | None:
        leaf, issuer = self._current()
        if issuer is None:
            return None
        try:
            return await self.fetch(leaf, issuer)
        except OcspError as exc:
            if self.last_error != str(exc):
                log.warning("TLS %s: OCSP staple refresh failed: %s", self.listener_id, exc)
            self.last_error = str(exc)
            return None

    def certificate_changed(self) -> None:
        """A new certificate is served: fetch its staple now instead of at the next tick."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            staple = await self.refresh_now()
            delay = self.refresh_interval if staple is not None else RETRY_AFTER_ERROR
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def status(self) -> dict:
        leaf, _ = self._current()
        staple = self._staples.get(leaf.serial_number)
        return {"enabled": True, "responder_url": self.responder_url, "last_error": self.last_error,
                "staple_status": staple.status if staple else None,
                "this_update": staple.this_update.isoformat() if staple else None,
                "next_update": staple.next_update.isoformat() if staple and staple.next_update else None,
                "fetched_at": staple.fetched_at.isoformat() if staple else None}
