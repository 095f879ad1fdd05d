"""The rules an ``ssl_options`` block must keep, written once as a table.

Every place that accepts TLS options reads this table rather than its own copy: the config loader (each problem
becomes a ``file:line:col`` issue under the listener's key), the TLS layer (``tls/options.validate_options``,
which every listener start and every run-time update goes through, so the admin API's ``PUT`` too) and the
Dashboard's listener form (a problem lands next to the form field its ``field`` names). The MQTTBroker CRD's CEL
rules speak of the operator's field names; tests/realapi/test_crd_validation.py feeds the same cases to the
API server and to this table and checks that they agree.

Only rules about the option values live here. Whether a file exists (the loader), what the local OpenSSL can do
and what a certificate holds (the TLS layer), and how a posted form parses (the Dashboard) are checked where that
knowledge is. The config layer is the lowest of the broker's layers, so everyone above may import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from .model import SslOptions

# Newest first: the order the Dashboard shows them in.
TLS_VERSIONS = ("tlsv1.3", "tlsv1.2", "tlsv1.1", "tlsv1")
VERIFY_MODES = ("verify_peer", "verify_none")
MAX_DEPTH = 100
# The TLS 1.3 suites OpenSSL knows; a name starting with TLS_ is one of them, anything else a TLS <= 1.2 cipher.
TLS13_SUITES = frozenset({
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256",
})


@dataclass(frozen=True)
class Problem:
    """One broken rule: which option, and what is wrong with it, in two voices."""

    field: str  # the key under ``ssl_options``, dotted below it: "depth", "ocsp.responder_url"
    message: str  # said of the key, as the config loader prints it after the key
    label: str  # the same for a person at the Dashboard's form, which names fields by their labels

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Rule:
    """``broken(options)`` is None while the options keep the rule, else the offending value (``{0}`` in texts)."""

    field: str
    message: str
    label: str
    broken: Callable[[SslOptions], object]

    def check(self, options: SslOptions) -> Problem | None:
        value = self.broken(options)
        if value is None:
            return None
        return Problem(self.field, self.message.format(value), self.label.format(value))


def cipher_names(ciphers: list[str]) -> list[str]:
    """The cipher names of ``ciphers``: EMQX accepts a list, and also one comma or colon separated string."""
    return [name.strip() for entry in ciphers for name in entry.replace(",", ":").split(":") if name.strip()]


def _when(condition: bool) -> object:
    return True if condition else None


def _first(values: Sequence[str], wrong: Callable[[str], bool]) -> str | None:
    return next((value for value in values if wrong(value)), None)


def _peer(options: SslOptions) -> bool:
    return options.verify == "verify_peer"


def _stapling(options: SslOptions) -> bool:
    return options.ocsp.enable_ocsp_stapling


def _not_http(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme not in ("http", "https") or not parsed.netloc


_NEEDS_PEER = "needs verify = verify_peer"

# In order: when a field breaks several rules, the first is the one a form shows.
RULES: tuple[Rule, ...] = (
    Rule("certfile", "is required for a TLS listener", "a certificate is required",
         lambda o: _when(not o.certfile)),
    Rule("keyfile", "is required for a TLS listener", "a private key is required",
         lambda o: _when(not o.keyfile)),
    Rule("verify", "must be verify_peer or verify_none, not {0!r}", "TLS Verify is on or off, not {0!r}",
         lambda o: o.verify if o.verify not in VERIFY_MODES else None),
    Rule("fail_if_no_peer_cert", _NEEDS_PEER, "Fail If No Peer Cert needs TLS Verify on",
         lambda o: _when(o.fail_if_no_peer_cert and not _peer(o))),
    Rule("cacertfile", "is required with verify = verify_peer (clients are checked against it)",
         "TLS Verify needs a CA certificate: the CAs that issue client certificates",
         lambda o: _when(_peer(o) and not o.cacertfile)),
    Rule("enable_crl_check", _NEEDS_PEER, "CRL checking applies to client certificates: it needs TLS Verify on",
         lambda o: _when(o.enable_crl_check and not _peer(o))),
    Rule("verify_peer_ext_key_usage", _NEEDS_PEER, "Required key usages apply to client certificates: they need "
         "TLS Verify on", lambda o: _when(bool(o.verify_peer_ext_key_usage.strip(" ,")) and not _peer(o))),
    Rule("versions", "must name at least one TLS version", "choose at least one TLS version",
         lambda o: _when(not o.versions)),
    Rule("versions", f"unknown version {{0!r}} (use {', '.join(reversed(TLS_VERSIONS))})",
         "unknown TLS version {0!r}", lambda o: _first(o.versions, lambda v: v not in TLS_VERSIONS)),
    Rule("versions", "lists a version twice", "a TLS version is chosen twice",
         lambda o: _when(len(set(o.versions)) != len(o.versions))),
    Rule("ciphers", f"unknown TLS 1.3 suite {{0!r}} (known: {', '.join(sorted(TLS13_SUITES))})",
         "unknown TLS 1.3 suite {0!r}",
         lambda o: _first(cipher_names(o.ciphers), lambda n: n.startswith("TLS_") and n not in TLS13_SUITES)),
    Rule("depth", f"must be between 0 and {MAX_DEPTH}, not {{0}}", f"a whole number from 0 to {MAX_DEPTH} (default 10)",
         lambda o: o.depth if not 0 <= o.depth <= MAX_DEPTH else None),
    Rule("handshake_timeout", "must be greater than 0", "Handshake timeout must be more than 0 s",
         lambda o: _when(not o.handshake_timeout > 0)),
    Rule("reload_interval", "must be greater than 0", "Reload interval must be more than 0 s",
         lambda o: _when(not o.reload_interval > 0)),
    Rule("ocsp.responder_url", "is required when OCSP stapling is enabled", "OCSP stapling needs the responder URL",
         lambda o: _when(_stapling(o) and not o.ocsp.responder_url)),
    Rule("ocsp.responder_url", "not an http(s) URL: {0!r}", "an http:// or https:// URL",
         lambda o: o.ocsp.responder_url if _stapling(o) and o.ocsp.responder_url
         and _not_http(o.ocsp.responder_url) else None),
    Rule("ocsp.issuer_pem", "is required when OCSP stapling is enabled",
         "OCSP stapling needs the issuer of the server certificate",
         lambda o: _when(_stapling(o) and not o.ocsp.issuer_pem)),
    Rule("ocsp.refresh_interval", "must be greater than 0", "OCSP refresh interval must be more than 0 s",
         lambda o: _when(_stapling(o) and not o.ocsp.refresh_interval > 0)),
    Rule("ocsp.refresh_http_timeout", "must be greater than 0", "OCSP HTTP timeout must be more than 0 s",
         lambda o: _when(_stapling(o) and not o.ocsp.refresh_http_timeout > 0)),
)


def check_ssl_options(options: SslOptions) -> list[Problem]:
    """Every rule ``options`` breaks, in table order (empty: the options are consistent)."""
    return [problem for problem in (rule.check(options) for rule in RULES) if problem is not None]
