"""Tenants stay apart, sessions belong to their owner (docs/security.md, "Tenancy").

- Mountpoints: ``fill_mountpoint`` fills a listener's ``${clientid}`` / ``${username}`` placeholders, or says
  which value it refuses. A value that is missing, empty or holds ``+``, ``#``, ``/`` or NUL would widen the
  client's namespace (a client id ``+`` under ``tenants/${clientid}/`` subscribing ``#`` reads every tenant) or
  step into another tenant's (``a/b`` inside tenant ``a``): the connection is refused, never escaped.
- Session owners: ``session_owner`` names the identity a session belongs to -- (kind, name, mountpoint) with
  kind ``user`` (a username an authenticator, a certificate or a pre-shared key vouched for), ``cert`` (the
  verified certificate's subject when there is no username), or ``anonymous`` (whatever username the client
  claimed, unverified). A different identity never inherits a session: ``mqtt.session_owner_check`` says what
  it gets instead (``OwnerCheck.verdict``).
"""

from __future__ import annotations

import logging
import re

from .authz import unsafe_value
from .metrics import REGISTRY, Registry

log = logging.getLogger("wharf_broker.tenancy")

# Verdicts of the owner check.
RESUME = "resume"  # same owner (or no session yet, or the check is off): attach as usual
REFUSE = "refuse"  # CONNACK "client identifier not valid"; the owner's session and connection are untouched
GUEST = "guest"  # a fresh session of its own, ended with the connection; the owner's is untouched

MOUNTPOINT_PLACEHOLDERS = (("${clientid}", "clientid"), ("${username}", "username"))
_PLACEHOLDER = re.compile(r"\$\{(clientid|username)\}")


def fill_mountpoint(mountpoint: str, client_id: str, username: str | None) -> tuple[str, str | None]:
    """(the mountpoint with its placeholders filled in, None) or ("", the placeholder whose value is refused)."""
    values = {"clientid": client_id, "username": username}
    for placeholder, name in MOUNTPOINT_PLACEHOLDERS:
        if placeholder in mountpoint and unsafe_value(values[name]):
            return "", name
    # One pass: a value that itself reads "${username}" stays as it is. (A missing username was refused above.)
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1)) or match.group(0), mountpoint), None


_ANONYMOUS = ("anonymous", "", "")


def session_owner(username: str | None, username_vouched: bool, peer_identity, cert_common_name: str | None,
                  mountpoint: str) -> tuple[str, str, str]:
    """The identity a session created by this client belongs to (see the module docstring).
    ``username_vouched``: an authenticator accepted it, or the certificate or pre-shared key yielded it."""
    if username is not None and username_vouched:
        return ("user", username, mountpoint)
    subject = None
    if peer_identity is not None and getattr(peer_identity, "der", None):
        subject = peer_identity.dn
    elif cert_common_name is not None:  # vouched for by the load balancer's PROXY v2 TLV
        subject = "CN=" + cert_common_name
    if subject:
        return ("cert", subject, mountpoint)
    if not username and not mountpoint:
        return _ANONYMOUS  # one tuple for all such clients, not one each
    return ("anonymous", username or "", mountpoint)


def owner_text(owner) -> str:
    """An owner for the log: kind and name (never a credential)."""
    if not owner:
        return "unknown"
    kind, name, mountpoint = owner
    text = f"{kind}:{name!r}" if name or kind != "anonymous" else kind
    return f"{text} under {mountpoint!r}" if mountpoint else text


class OwnerCheck:
    """``mqtt.session_owner_check``: discard (a different identity gets a fresh session of its own), refuse
    (it is refused) or off (it inherits the session, as MQTT alone would have it -- but every message it then
    receives through the inherited subscriptions is still authorized for it)."""

    ACTIONS = ("discard", "refuse", "off")

    def __init__(self, mode: str, registry: Registry = REGISTRY) -> None:
        self.mode = mode
        family = registry.counter("wharf_session_owner_mismatch_total",
                                  "Connections presenting a client id whose session belongs to another identity, "
                                  "by what they got (mqtt.session_owner_check)", ("action",))
        self.mismatch = {action: family.labels(action=action) for action in self.ACTIONS}
        mountpoint = registry.counter("wharf_mountpoint_refused_total",
                                      "Connections refused because a mountpoint placeholder's value (missing, "
                                      "empty, or holding + # / NUL) would widen the client's namespace",
                                      ("placeholder",))
        self.mountpoint_refused = {name: mountpoint.labels(placeholder=name)
                                   for _placeholder, name in MOUNTPOINT_PLACEHOLDERS}

    def verdict(self, client_id: str, current, newcomer, peer_text: str) -> str:
        """What a connection of ``newcomer`` gets for ``client_id``'s session, owned by ``current`` (None: no
        session, or one recorded without an owner)."""
        if current is None or tuple(current) == tuple(newcomer):
            return RESUME
        self.mismatch[self.mode].inc()
        outcome = {"discard": "gets a fresh session of its own", "refuse": "refused",
                   "off": "inherits it (session_owner_check = off)"}[self.mode]
        log.warning("client %r from %s as %s: the session belongs to %s; %s", client_id, peer_text,
                    owner_text(newcomer), owner_text(current), outcome)
        return {"discard": GUEST, "refuse": REFUSE, "off": RESUME}[self.mode]


__all__ = ["GUEST", "REFUSE", "RESUME", "OwnerCheck", "fill_mountpoint", "owner_text", "session_owner"]
