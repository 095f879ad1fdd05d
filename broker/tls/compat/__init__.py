"""Everything the TLS layer takes from outside a library's public API, each with a plain path to fall back to.

Three pieces reach into internals because the public APIs lack what they do:

- ``openssl_shim`` relies on CPython's ``ssl.SSLContext`` layout (the ``SSL_CTX*`` after the object header) and
  libssl's symbols, through ctypes. It gives stdlib contexts depth, TLS 1.3 suites and session-cache control.
  Plain path ``none``: stdlib contexts without them; listeners that need depth or TLS 1.3 suites use the pyOpenSSL
  backend.
- ``lean_sslproto`` relies on asyncio ``SSLProtocol`` private attributes (``max_size``, ``_ssl_buffer_view``,
  ``_incoming``). It gives one read buffer per event loop instead of 256 KiB per TLS connection. Plain path
  ``plain``: asyncio's own ``SSLProtocol``.
- ``pyopenssl`` relies on pyOpenSSL's private cffi bindings (``OpenSSL._util.lib``, ``Context._context``,
  ``Connection._ssl``). They give PSK, precise verify-failure reasons and session-reuse detection. Plain path
  ``public``: PSK listeners refuse to start, other pyOpenSSL listeners serve; ``unavailable`` (no pyOpenSSL at
  all): OCSP stapling and PSK listeners refuse to start.

Each is checked the first time a TLS listener needs it (pyOpenSSL is not even imported before a listener chooses
its backend). The outcome is logged once per process (a warning for a fallback), exported as
``wharf_tls_compat_path{component, path} 1`` and shown by ``/healthz`` under ``tls.compat``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from asyncio import sslproto
from dataclasses import dataclass

from ...metrics import REGISTRY, Registry
from . import lean_sslproto as _lean
from . import openssl_shim as _shim
from . import pyopenssl as _pyossl

log = logging.getLogger("wharf.tls")

PATHS = {
    "openssl_shim": ("shim", "none"),
    "lean_sslproto": ("lean", "plain"),
    "pyopenssl": ("private", "public", "unavailable"),
}


@dataclass(frozen=True)
class Outcome:
    component: str
    path: str
    fallback: bool
    detail: str


_outcomes: dict[str, Outcome] = {}
_lock = threading.Lock()


def _record(outcome: Outcome, registry: Registry) -> None:
    with _lock:
        previous = _outcomes.get(outcome.component)
        _outcomes[outcome.component] = outcome
    if previous != outcome:
        if outcome.fallback:
            log.warning("TLS compat: %s runs the %s path: %s", outcome.component, outcome.path, outcome.detail)
        else:
            log.info("TLS compat: %s runs the %s path (%s)", outcome.component, outcome.path, outcome.detail)
    gauge = registry.gauge("wharf_tls_compat_path",
                           "Which path each TLS compatibility component runs (1): its own or the plain fallback",
                           ["component", "path"])
    for path in PATHS[outcome.component]:
        if path == outcome.path:
            gauge.labels(component=outcome.component, path=path).set(1)
        else:
            gauge.remove(component=outcome.component, path=path)


def use_openssl_shim(registry: Registry = REGISTRY) -> _shim.OpenSslShim | None:
    """The ctypes shim for stdlib contexts, or None (blocks: the first call runs the self-test in a child)."""
    shim = _shim.detect()
    if shim is not None:
        _record(Outcome("openssl_shim", "shim", False, "self-test passed"), registry)
    else:
        _record(Outcome("openssl_shim", "none", True,
                        f"self-test failed ({_shim.detect_detail}); stdlib contexts cannot set depth or TLS 1.3 "
                        "suites, listeners that need them use the pyOpenSSL backend"), registry)
    return shim


def sslprotocol_class(loop: asyncio.AbstractEventLoop, registry: Registry = REGISTRY) -> type[sslproto.SSLProtocol]:
    """The ``SSLProtocol`` class the stdlib backend builds when something runs ahead of TLS."""
    problem = _lean.check(loop)
    if problem is None:
        _record(Outcome("lean_sslproto", "lean", False, "one shared read buffer per event loop"), registry)
    else:
        _record(Outcome("lean_sslproto", "plain", True,
                        f"{problem}; asyncio's own SSLProtocol is used (a 256 KiB buffer per connection)"), registry)
    return _lean.protocol_class(problem is None)


def use_pyopenssl(registry: Registry = REGISTRY) -> _pyossl.PyOpenSsl | None:
    """pyOpenSSL (imported now), or None when it cannot be imported; the outcome is recorded either way."""
    loaded = _pyossl.load()
    if loaded is None:
        _record(Outcome("pyopenssl", "unavailable", True,
                        f"pyOpenSSL cannot be imported ({_pyossl.load_error}): OCSP stapling and PSK listeners "
                        "cannot run"), registry)
    elif loaded.private is None:
        _record(Outcome("pyopenssl", "public", True,
                        f"pyOpenSSL {loaded.version} lacks a private binding PSK needs ({loaded.detail}): PSK "
                        "listeners cannot run, other listeners are served"), registry)
    else:
        _record(Outcome("pyopenssl", "private", False, f"pyOpenSSL {loaded.version}, private bindings checked"),
                registry)
    return loaded


def pyopenssl_error() -> str:
    """Why pyOpenSSL could not be imported (after ``use_pyopenssl()`` returned None)."""
    return _pyossl.load_error


def status() -> dict[str, dict[str, object]]:
    """What was checked so far in this process: component -> path, whether it is a fallback, and why."""
    with _lock:
        return {name: {"path": o.path, "fallback": o.fallback, "detail": o.detail} for name, o in _outcomes.items()}
