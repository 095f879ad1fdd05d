"""Checks on the client certificate that run right after a successful handshake, before MQTT sees the client.

- ``verify_peer_ext_key_usage``: the certificate's extended key usage must list every required usage;
- ``enable_crl_check``: the certificate's CRL distribution points (``crl_cache.py``), fail closed; with no
  distribution point and no local ``crlfile`` there is nothing to prove the certificate good, so it is refused;
- a *resumed* session skipped certificate verification, so it is checked again against the current local CRL:
  a CRL reloaded after the session was made must not be bypassed by resuming it;
- ``revoked_now`` re-checks *open* connections whenever the CRLs change (MQTT connections live for days).

``check_now`` answers synchronously when it can (cached CRLs): None = accept, a string = refusal reason, or an
awaitable for the answer when a CRL has to be fetched first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Awaitable

from cryptography import x509

from .crl_cache import distribution_points
from .material import is_revoked

if TYPE_CHECKING:
    from .runtime import TlsListenerRuntime

log = logging.getLogger("wharf.tls")


async def settle(pending) -> str | None:
    """The verdict of a pending check; an unexpected error refuses the client (fail closed)."""
    try:
        return await pending
    except Exception:  # noqa: BLE001 - logged, and the client is refused rather than let in unchecked
        log.exception("TLS: post-handshake check failed")
        return "check_failed"


class PeerChecker:
    def __init__(self, runtime: "TlsListenerRuntime") -> None:
        self._runtime = runtime

    def active(self) -> bool:
        policy = self._runtime.current_generation.policy
        return bool(policy.required_ekus) or policy.enable_crl_check

    def check_now(self, der: bytes | None, reused: bool) -> str | None | Awaitable[str | None]:
        generation = self._runtime.current_generation
        policy = generation.policy
        if der is None or not (policy.required_ekus or policy.enable_crl_check):
            return None
        cert = x509.load_der_x509_certificate(der)
        if policy.required_ekus:
            try:
                usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
            except x509.ExtensionNotFound:
                usages = set()
            if not set(policy.required_ekus) <= usages:
                return "ext_key_usage"
        if not policy.enable_crl_check:
            return None
        local = generation.material.crls
        if local:
            revoked = is_revoked(cert, local) if reused else False
            if revoked:
                return "certificate_revoked"
            if revoked is None:
                return "crl_unavailable"
        if not distribution_points(cert):
            return None if local else "crl_unavailable"
        cache = self._runtime.crl_cache
        issuers = generation.material.ca_certs
        verdict = cache.verdict_cached(cert, issuers)
        if verdict is False:
            return cache.verdict(cert, issuers)
        return verdict

    def revoked_now(self, der: bytes) -> bool:
        """For a live connection: is its certificate revoked by a CRL we hold now (local or cached)?"""
        generation = self._runtime.current_generation
        if not generation.policy.enable_crl_check:
            return False
        cert = x509.load_der_x509_certificate(der)
        if is_revoked(cert, generation.material.crls):
            return True
        cache = self._runtime.crl_cache
        if cache is not None and distribution_points(cert):
            return cache.verdict_cached(cert, generation.material.ca_certs) == "crl_revoked"
        return False
