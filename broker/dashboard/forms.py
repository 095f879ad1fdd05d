"""The SSL/WSS listener form: what the browser posts → ``ssl_options`` changes and uploads, or errors by field.

Pure functions, no I/O: the checks a person needs next to the field they typed in (EMQX's Dashboard rules:
Fail If No Peer Cert only with TLS Verify on, PSK only with TLS 1.2 and below, depth 0..100). The TLS layer
checks everything again before it applies anything; ``field_of`` puts its messages next to the right field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.loader import parse_duration
from ..config.model import SslOptions

TLS_VERSIONS = ("tlsv1.3", "tlsv1.2", "tlsv1.1", "tlsv1")
MAX_DEPTH = 100
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

_CIPHER_NAME = re.compile(r"[A-Za-z0-9_+\-.!@=]+")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
_LOADER_KEY = re.compile(r"listeners\.\w+\.[\w-]+\.ssl_options\.")


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
        seconds = parse_duration(text)
    except ValueError:
        errors[name] = f"{what}: a duration like 120s, 5m or 1h"
        return None
    if seconds <= 0:
        errors[name] = f"{what} must be more than 0 s"
        return None
    return seconds


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
        fail = _checked(fields, "fail_if_no_peer_cert")
        if fail and not verify:
            errors["fail_if_no_peer_cert"] = "Fail If No Peer Cert needs TLS Verify on"
        form.changes["fail_if_no_peer_cert"] = fail and verify
    if verify and not current.cacertfile and "cacertfile" not in uploads:
        errors.setdefault("cacertfile", "TLS Verify needs a CA certificate: the CAs that issue client certificates")

    if wanted("enable_crl_check"):
        crl = _checked(fields, "enable_crl_check")
        if crl and not verify:
            errors["enable_crl_check"] = "CRL checking applies to client certificates: it needs TLS Verify on"
        form.changes["enable_crl_check"] = crl

    if wanted("versions"):
        versions = [v for v in TLS_VERSIONS if v in (fields.get("versions") or [])]
        unknown = sorted(set(fields.get("versions") or []) - set(TLS_VERSIONS))
        if unknown:
            errors["versions"] = f"unknown TLS version {unknown[0]!r}"
        elif not versions:
            errors["versions"] = "choose at least one TLS version"
        elif psk_enabled and not set(versions) & {"tlsv1.2", "tlsv1.1", "tlsv1"}:
            errors["versions"] = "PSK authentication is on: it needs TLS 1.2 or below among the versions"
        form.changes["versions"] = versions

    if wanted("depth"):
        text = _one(fields, "depth")
        if not re.fullmatch(r"\d{1,4}", text) or int(text) > MAX_DEPTH:
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
        ocsp: dict[str, Any] = {"enable_ocsp_stapling": _checked(fields, "enable_ocsp_stapling")}
        url = _one(fields, "ocsp_responder_url")
        if url and not _URL.fullmatch(url):
            errors["ocsp_responder_url"] = "an http:// or https:// URL"
        ocsp["responder_url"] = url
        interval = _one(fields, "ocsp_refresh_interval") or "5m"
        seconds = _duration(interval, "OCSP refresh interval", errors, "ocsp_refresh_interval")
        if seconds is not None:
            ocsp["refresh_interval"] = seconds
        if ocsp["enable_ocsp_stapling"]:
            if not url:
                errors.setdefault("ocsp_responder_url", "OCSP stapling needs the responder URL")
            if not current.ocsp.issuer_pem and "ocsp_issuer_pem" not in uploads:
                errors.setdefault("ocsp_issuer_pem", "OCSP stapling needs the issuer of the server certificate")
        form.changes["ocsp"] = ocsp
    return form


# Message prefixes of the config loader and the TLS layer → the form field they are about.
_PREFIXES = (
    ("keyfile", "keyfile"), ("certfile", "certfile"), ("cacertfile", "cacertfile"), ("crlfile", "crlfile"),
    ("ocsp.issuer_pem", "ocsp_issuer_pem"), ("ocsp.responder_url", "ocsp_responder_url"),
    ("ocsp.refresh_interval", "ocsp_refresh_interval"), ("ocsp", "enable_ocsp_stapling"),
    ("fail_if_no_peer_cert", "fail_if_no_peer_cert"), ("enable_crl_check", "enable_crl_check"),
    ("verify = verify_peer needs cacertfile", "cacertfile"), ("verify", "verify"), ("versions", "versions"),
    ("ciphers", "ciphers"), ("depth", "depth"), ("reload_interval", "reload_interval"),
    ("password", "password"),
)


def field_of(message: str) -> str:
    """The form field a TLS-layer message (or a config issue's dotted key) is about (``_form`` when none)."""
    loader_key = _LOADER_KEY.search(message)  # config loader: "<source>: listeners.ssl.x.ssl_options.depth: ..."
    text = message[loader_key.end():] if loader_key else message
    for prefix, name in _PREFIXES:
        if text.startswith(prefix):
            return name
    return "_form"
