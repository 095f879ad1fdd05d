"""Validation of TLS Secret material before any broker is told to load it.

A rotation is only signalled when the new material would work: the chain and key parse, the key belongs to
the leaf certificate, the chain is in order and leads (through the intermediates in ``tls.crt``) to a trusted
CA (``trust_anchors``: the pinned issuer CAs of ``tls.trustedIssuerCARef`` or else the Secret's ``ca.crt``, and
the listener's CA bundle), and the leaf is inside its validity window. Anything else is refused with a reason
code and a message that say what is wrong, and the brokers keep what they serve. The checks are ``wharf_broker.tls.validation``: the brokers run the same ones before every
swap, so material refused here is refused there too.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass

# The checks are the broker's own (one module for both gates, so they cannot drift apart); their reasons are
# used in the CertificatesReady condition and in events.
from wharf_broker.tls.validation import (EXPIRED, KEY_MISMATCH, MISORDERED, MISSING, NOT_YET_VALID, UNPARSABLE,
                                         UNTRUSTED, check_server_material, fingerprint)
from wharf_broker.tls.validation import MaterialRefused as InvalidMaterial

__all__ = ["EXPIRED", "KEY_MISMATCH", "MISORDERED", "MISSING", "NOT_YET_VALID", "UNPARSABLE", "UNTRUSTED",
           "InvalidMaterial", "Material", "configmap_bytes", "fingerprint", "secret_bytes", "trust_anchors", "validate"]


@dataclass(frozen=True)
class Material:
    """What a valid Secret holds, as the operator reports it."""

    fingerprint: str  # lowercase hex SHA-256 of the leaf's DER, as the broker's admin API reports it
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    chain_checked: bool  # False when no CA bundle was available to check against
    trust_digest: str = ""  # SHA-256 of the CA bundle checked against: a CA-only change changes it

    @property
    def signature(self) -> str:
        """What the pods must have loaded: the leaf and the trusted CAs."""
        return f"{self.fingerprint}/{self.trust_digest}"


def secret_bytes(secret: dict, key: str) -> bytes | None:
    """A key of a Secret object's data (base64), or of its stringData (as written by some tools)."""
    data = secret.get("data") or {}
    if key in data and data[key] is not None:
        return base64.b64decode(data[key])
    string_data = secret.get("stringData") or {}
    if key in string_data and string_data[key] is not None:
        return string_data[key].encode()
    return None


def configmap_bytes(configmap: dict, key: str) -> bytes | None:
    data = configmap.get("data") or {}
    if key in data:
        return data[key].encode()
    binary = configmap.get("binaryData") or {}
    if key in binary:
        return base64.b64decode(binary[key])
    return None


def trust_anchors(secret_ca: bytes | None, pinned: bytes | None, ca_bundle: bytes | None) -> bytes | None:
    """The CAs a served chain must lead to, as the brokers get them (``server_cacertfile``, ``cacertfile``).

    ``pinned`` (tls.trustedIssuerCARef) replaces the Secret's own ``ca.crt``: an issuer pointed at a wrong CA
    writes that CA there too, so only a bundle it does not write can refuse its certificate. The listener's
    ``ca_bundle`` (caRef) is trusted either way, as the brokers trust ``cacertfile``. None: nothing to check."""
    anchors = (pinned if pinned is not None else secret_ca) or b""
    if ca_bundle:
        # Joined as they always were: the same bytes give the same trust_digest, so nothing is re-signalled.
        anchors = anchors.rstrip(b"\n") + b"\n" + ca_bundle if anchors else ca_bundle
    return anchors or None


def validate(cert_pem: bytes | None, key_pem: bytes | None, ca_pem: bytes | None = None,
             password: bytes | None = None, now: datetime.datetime | None = None) -> Material:
    """Check server material; returns what it holds or raises ``InvalidMaterial``."""
    checked = check_server_material(cert_pem, key_pem, ca_pem, password, now)
    leaf = checked.leaf
    return Material(fingerprint=fingerprint(leaf), subject=leaf.subject.rfc4514_string(),
                    not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
                    chain_checked=checked.chain_checked,
                    trust_digest=hashlib.sha256(ca_pem).hexdigest() if ca_pem else "")
