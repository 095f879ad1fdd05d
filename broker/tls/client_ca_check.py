"""Would a candidate client-CA bundle lock connected clients out? (``POST /api/v5/listeners/{id}/client_ca_check``)

Before the operator gives a listener a new ``cacertfile`` (an MQTTBroker's ``caRef``), it asks every broker how
many of the clients connected there now would no longer verify against it, grouped by the issuer of their
certificates; it does not signal the new bundle while any would (docs/security.md, "Client-CA rotation").

Nothing is kept per connection for this: the TLS layer already holds each connection's verified client
certificate for the connection's life (OpenSSL keeps the peer certificate), and it is read only when asked. The
answer costs one certificate parse and at most two path validations per distinct client certificate, in a
worker thread.

How a client is judged (``method`` in the answer):

- ``chain``: cryptography's X.509 path validation of the client's certificate against the candidate bundle, the
  way the listener's OpenSSL would run it: the candidate's self-signed certificates are the trust anchors (every
  certificate of it with ``partial_chain``), the intermediates are those the client sent (pyOpenSSL backend) or,
  where the stdlib backend does not expose them (Python 3.11), the CA certificates of the current bundle that
  are not self-signed; ``depth`` is the listener's. A client counts as locked out only if the same check passes
  against the current bundle.
- ``issuer``: where that check fails against the current bundle too (cryptography's profile is stricter than
  OpenSSL in places, the chain needs intermediates the broker cannot see, or the client's certificate expired
  while it stayed connected: its age is not the bundle's doing), the rule falls back to the issuer: a client
  stays if the candidate bundle holds a certificate with its certificate's issuer name whose key signed it.
- ``unchecked``: a client whose issuer is not in the current bundle either; counted apart, not as locked out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import verification

from ..auth import peer_identity


class CandidateError(ValueError):
    """The candidate bundle holds no usable certificate."""


@dataclass
class LockoutReport:
    listener: str
    candidate_sha256: str
    connections: int = 0  # connected clients that presented a certificate
    would_fail: int = 0
    unchecked: int = 0
    issuers: Counter = field(default_factory=Counter)  # issuer subject -> clients that would fail
    methods: Counter = field(default_factory=Counter)  # method -> clients judged by it

    def as_dict(self) -> dict[str, Any]:
        return {"listener": self.listener, "candidate_sha256": self.candidate_sha256,
                "connections": self.connections, "would_fail": self.would_fail, "unchecked": self.unchecked,
                "issuers": [{"issuer": issuer, "clients": count} for issuer, count in sorted(self.issuers.items())],
                "methods": dict(sorted(self.methods.items()))}


def parse_bundle(pem: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CandidateError(f"the candidate bundle is not PEM certificates: {exc}") from None
    if not any(_is_ca(c) for c in certificates):
        raise CandidateError("the candidate bundle holds no CA certificate")
    return certificates


def connected_certificates(channels: Iterable[Any], listener_id: str) -> list[tuple[bytes, tuple[bytes, ...]]]:
    """The client certificate (DER) and the chain the client sent, where known, of every connected client of
    ``listener_id`` that presented one. Runs on the event loop (it touches the live TLS objects)."""
    found = []
    for channel in channels:
        connection = getattr(channel, "connection", None)
        if connection is None or getattr(connection.listener, "id", None) != listener_id:
            continue
        transport = connection.transport
        if transport is None or transport.is_closing():
            continue
        identity = peer_identity(transport)
        if identity is None or not identity.der:
            continue
        found.append((identity.der, _sent_chain(transport, identity.der)))
    return found


def _sent_chain(transport: Any, leaf: bytes) -> tuple[bytes, ...]:
    """The certificates the client sent besides its own (pyOpenSSL backend only; empty otherwise)."""
    connection = getattr(transport.get_extra_info("ssl_object"), "connection", None)
    get_chain = getattr(connection, "get_peer_cert_chain", None)
    if get_chain is None:
        return ()
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = get_chain(as_cryptography=True) or []
    return tuple(der for der in (c.public_bytes(Encoding.DER) for c in chain) if der != leaf)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return certificate.issuer == certificate.subject  # an old-style root without extensions


def _self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# Lenient profiles, as OpenSSL is: a CA needs basicConstraints (cA checked by the validation itself), nothing else
# is required of either certificate.
_CA_POLICY = verification.ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, verification.Criticality.AGNOSTIC, None)
_EE_POLICY = verification.ExtensionPolicy.permit_all()


class _Judge:
    """Path validation against one bundle, as the listener's OpenSSL would run it (see the module docstring)."""

    def __init__(self, bundle: list[x509.Certificate], stand_in: list[x509.Certificate], partial_chain: bool,
                 depth: int) -> None:
        anchors = [c for c in bundle if partial_chain or _self_signed(c)]
        self.bundle = bundle
        self.intermediates = [c for c in bundle if c not in anchors] + stand_in
        self.verifier = None if not anchors else (
            verification.PolicyBuilder().store(verification.Store(anchors)).time(dt.datetime.now(dt.timezone.utc))
            .max_chain_depth(min(max(1, depth), 255))
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY).build_client_verifier())

    def verifies(self, leaf: x509.Certificate, sent: list[x509.Certificate]) -> bool:
        if self.verifier is None:
            return False
        try:
            self.verifier.verify(leaf, sent + self.intermediates)
        except verification.VerificationError:
            return False
        return True

    def holds_issuer(self, leaf: x509.Certificate) -> bool:
        for ca in self.bundle:
            if ca.subject != leaf.issuer:
                continue
            try:
                leaf.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False


def check(listener_id: str, candidate_pem: bytes, current: list[x509.Certificate],
          clients: list[tuple[bytes, tuple[bytes, ...]]], *, partial_chain: bool, depth: int) -> LockoutReport:
    """Judge every connected client against ``candidate_pem`` (runs in a worker thread)."""
    candidate = parse_bundle(candidate_pem)
    stand_in = [c for c in current if _is_ca(c) and not _self_signed(c)]
    now_judge = _Judge(list(current), stand_in, partial_chain, depth)
    new_judge = _Judge(candidate, stand_in, partial_chain, depth)
    report = LockoutReport(listener_id, hashlib.sha256(candidate_pem).hexdigest())
    verdicts: dict[tuple[bytes, tuple[bytes, ...]], tuple[str, str | None]] = {}
    for key in clients:
        report.connections += 1
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = verdicts[key] = _judge_one(key, now_judge, new_judge)
        method, failing_issuer = verdict
        report.methods[method] += 1
        if method == "unchecked":
            report.unchecked += 1
        elif failing_issuer is not None:
            report.would_fail += 1
            report.issuers[failing_issuer] += 1
    return report


def _judge_one(key: tuple[bytes, tuple[bytes, ...]], now_judge: _Judge,
               new_judge: _Judge) -> tuple[str, str | None]:
    """(method, the issuer when the client would fail else None)."""
    der, sent_der = key
    leaf = x509.load_der_x509_certificate(der)
    sent = [x509.load_der_x509_certificate(c) for c in sent_der]
    issuer = leaf.issuer.rfc4514_string()
    if now_judge.verifies(leaf, sent):
        return "chain", None if new_judge.verifies(leaf, sent) else issuer
    if now_judge.holds_issuer(leaf):
        return "issuer", None if new_judge.holds_issuer(leaf) else issuer
    return "unchecked", None
