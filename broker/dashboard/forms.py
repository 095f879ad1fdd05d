"""The SSL/WSS listener form: what the browser posts → ``ssl_options`` changes and uploads, or errors by field.

Pure functions, no I/O. Here: how a posted form parses (numbers, durations, cipher names, PEM uploads) and the
one rule only a person at this form is held to (PSK on: a version of TLS 1.2 or below stays chosen). The rules
about the option values (Fail If No Peer Cert only with TLS Verify on, depth 0..100, ...) are the table in
``config/tls_rules.py``, the same the config loader and the TLS layer apply: the posted values, merged into the
listener's current options, go through it, and each problem lands next to the form field its key is shown in
(``FORM_FIELDS``), in the table's words for a person. The TLS layer checks everything again before it applies
anything.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.loader import parse_duration
from ..config.model import SslOptions
from ..config.tls_rules import MAX_DEPTH, TLS_VERSIONS, Problem, check_ssl_options

__all__ = ["FORM_FIELDS", "MAX_DEPTH", "MAX_UPLOAD_BYTES", "OPERATOR_OWNED", "TLS_VERSIONS", "UPLOADS", "SslForm",
           "form_field", "parse_ssl_form", "place_problems"]

MAX_UPLOAD_BYTES = 256 * 1024

# Upload slots: form field → (ssl_options key, what it holds, the PEM header it must contain).
UPLOADS: dict[str, tuple[str, str, str]] = {
    "certfile": ("certfile", "certificate", "-----BEGIN CERTIFICATE-----"),
    "keyfile": ("keyfile", "private key", "PRIVATE KEY-----"),
    "cacertfile": ("cacertfile", "CA certificate", "-----BEGIN CERTIFICATE-----"),
    "crlfile": ("crlfile", "CRL", "-----BEGIN X509 CRL-----"),
    "ocsp_issuer_pem": ("ocsp.issuer_pem", "issuer certificate", "-----BEGIN CERTIFICATE-----"),
}

# Under the operator, the MQTTBroker resource renders every listener (operator/wharf_operator/render.py manages
# the whole ``listeners`` root and pushes ssl_options live), so every field of this form is its: shown read-only,
# and refused if posted. A change made here would also be lost when the pod restarts from the rendered config.
OPERATOR_OWNED = frozenset({
    "verify", "fail_if_no_peer_cert", "certfile", "keyfile", "cacertfile", "password", "versions", "ciphers",
    "depth", "enable_crl_check", "crlfile", "enable_ocsp_stapling", "ocsp_responder_url", "ocsp_issuer_pem",
    "ocsp_refresh_interval", "reload_interval",
})

# Keys under ssl_options → the form field that shows them (the others are the key itself, when the form has it).
FORM_FIELDS = {
    "ocsp.enable_ocsp_stapling": "enable_ocsp_stapling", "ocsp.responder_url": "ocsp_responder_url",
    "ocsp.issuer_pem": "ocsp_issuer_pem", "ocsp.refresh_interval": "ocsp_refresh_interval",
}
_SHOWN = frozenset({"verify", "fail_if_no_peer_cert", "certfile", "keyfile", "cacertfile", "password", "versions",
                    "ciphers", "depth", "enable_crl_check", "crlfile", "reload_interval", *FORM_FIELDS.values()})
# An uploaded file is not stored before the whole form checks out; the rules only need to know one is there.
_UPLOADED = "(uploaded)"

_CIPHER_NAME = re.compile(r"[A-Za-z0-9_+\-.!@=]+")


@dataclass
class SslForm:
    changes: dict[str, Any] = field(default_factory=dict)  # for ``bind_ssl_options`` (paths added later)
    uploads: dict[str, bytes] = field(default_factory=dict)  # form field → PEM bytes
    errors: dict[str, str] = field(default_factory=dict)  # form field (or "_form") → message


def _one(fields: Mapping[str, list[str]], name: str) -> str:
    values = fields.get(name) or [""]
    return values[-1].strip()


def _checked(fields: Mapping[str, list[str]], name: str) -> bool:
    return _one(fields, name) == "on"


def _duration(text: str, what: str, errors: dict[str, str], name: str) -> float | None:
    try:
        return parse_duration(text)
    except ValueError:
        errors[name] = f"{what}: a duration like 120s, 5m or 1h"
        return None


def form_field(key: str) -> str:
    """The form field that shows the ssl_options key ``key`` ("_form" when the form does not show it)."""
    name = FORM_FIELDS.get(key, key)
    return name if name in _SHOWN else "_form"


def place_problems(problems: Iterable[Problem], errors: dict[str, str]) -> None:
    """Each problem next to its form field, in words for a person; a field keeps the first problem it got."""
    for problem in problems:
        name = form_field(problem.field)
        errors.setdefault(name, problem.label if name != "_form" else str(problem))


def _candidate(current: SslOptions, changes: dict[str, Any], uploads: Mapping[str, bytes]) -> SslOptions:
    """``current`` with the form's ``changes`` and a stand-in path for every uploaded file."""
    top = {k: v for k, v in changes.items() if k != "ocsp"}
    ocsp = dict(changes.get("ocsp", {}))
    for name in uploads:
        if name in UPLOADS:
            key = UPLOADS[name][0]
            if key == "ocsp.issuer_pem":
                ocsp["issuer_pem"] = _UPLOADED
            else:
                top[key] = _UPLOADED
    return dataclasses.replace(current, **top, ocsp=dataclasses.replace(current.ocsp, **ocsp))


# Long on purpose: one field per branch (#17 item 4: one validator).
def parse_ssl_form(fields: Mapping[str, list[str]], uploads: Mapping[str, bytes], current: SslOptions,  # noqa: C901
                   psk_enabled: bool, owned: frozenset[str] = frozenset()) -> SslForm:
    """Check a posted form against the listener's ``current`` options.

    ``fields``: every posted value by name (checkboxes post ``on`` when ticked, nothing otherwise);
    ``uploads``: non-empty uploaded files by field name; ``owned``: fields the operator owns (not read).
    """
    form = SslForm()
    errors = form.errors

    for name in sorted(owned):
        if name in uploads or (name not in ("verify", "fail_if_no_peer_cert", "enable_crl_check",
                                             "enable_ocsp_stapling") and _one(fields, name)):
            errors[name] = "owned by the MQTTBroker resource: change it there"

    def wanted(name: str) -> bool:
        return name not in owned

    # Uploads: size and PEM shape here; key/cert match, chain and validity in the TLS layer.
    for name, data in uploads.items():
        if name not in UPLOADS or not wanted(name):
            continue
        _, what, marker = UPLOADS[name]
        if len(data) > MAX_UPLOAD_BYTES:
            errors[name] = f"the {what} file is larger than {MAX_UPLOAD_BYTES // 1024} KiB"
        elif marker.encode() not in data:
            errors[name] = f"not a PEM {what} (expected a block with {marker.strip('-')})"
        else:
            form.uploads[name] = data

    verify = current.verify == "verify_peer"
    if wanted("verify"):
        verify = _checked(fields, "verify")
        form.changes["verify"] = "verify_peer" if verify else "verify_none"
    if wanted("fail_if_no_peer_cert"):
        form.changes["fail_if_no_peer_cert"] = _checked(fields, "fail_if_no_peer_cert")
    if wanted("enable_crl_check"):
        form.changes["enable_crl_check"] = _checked(fields, "enable_crl_check")

    if wanted("versions"):
        posted = fields.get("versions") or []
        # Newest first, as the checkboxes show them; unknown names kept for the rules to name.
        versions = [v for v in TLS_VERSIONS if v in posted] + sorted(set(posted) - set(TLS_VERSIONS))
        up_to_1_2 = {"tlsv1.2", "tlsv1.1", "tlsv1"}
        if psk_enabled and posted and set(posted) <= set(TLS_VERSIONS) and not set(posted) & up_to_1_2:
            # The TLS layer only warns (a config file keeps starting); a person choosing versions is told here.
            errors["versions"] = "PSK authentication is on: it needs TLS 1.2 or below among the versions"
        form.changes["versions"] = versions

    if wanted("depth"):
        text = _one(fields, "depth")
        if not re.fullmatch(r"\d{1,4}", text):
            errors["depth"] = f"a whole number from 0 to {MAX_DEPTH} (default 10)"
        else:
            form.changes["depth"] = int(text)

    if wanted("ciphers"):
        names = [n for n in re.split(r"[\s,]+", _one(fields, "ciphers")) if n]
        bad = [n for n in names if not _CIPHER_NAME.fullmatch(n)]
        if bad:
            errors["ciphers"] = f"not a cipher suite name: {bad[0][:40]!r}"
        form.changes["ciphers"] = names

    if wanted("reload_interval"):
        seconds = _duration(_one(fields, "reload_interval"), "Reload interval", errors, "reload_interval")
        if seconds is not None:
            form.changes["reload_interval"] = seconds

    if wanted("password"):
        if _checked(fields, "clear_password"):
            form.changes["password"] = ""
        elif _one(fields, "password"):
            # Not stripped: a password may start or end with a space.
            form.changes["password"] = (fields.get("password") or [""])[-1]

    if wanted("enable_ocsp_stapling"):
        ocsp: dict[str, Any] = {"enable_ocsp_stapling": _checked(fields, "enable_ocsp_stapling"),
                                "responder_url": _one(fields, "ocsp_responder_url")}
        interval = _one(fields, "ocsp_refresh_interval") or "5m"
        seconds = _duration(interval, "OCSP refresh interval", errors, "ocsp_refresh_interval")
        if seconds is not None:
            ocsp["refresh_interval"] = seconds
        form.changes["ocsp"] = ocsp

    place_problems(check_ssl_options(_candidate(current, form.changes, uploads)), errors)
    return form


# Certificate material is refused by messages of the TLS layer and of the checks shared with the operator
# (tls/validation.py), which name the file they are about first but carry no key (unlike option problems).
_MATERIAL = (("certfile", "certfile"), ("keyfile", "keyfile"), ("cacertfile", "cacertfile"),
             ("crlfile", "crlfile"), ("ocsp.issuer_pem", "ocsp_issuer_pem"), ("password", "password"))


def material_field(message: str) -> str:
    """The upload field a refusal of certificate material is about (``_form`` when it names none)."""
    return next((name for prefix, name in _MATERIAL if message.startswith(prefix)), "_form")
