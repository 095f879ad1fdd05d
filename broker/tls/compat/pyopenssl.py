"""pyOpenSSL, imported only when a listener needs it, and the private bindings PSK relies on.

``load()`` imports pyOpenSSL the first time a listener chooses the pyOpenSSL backend (OCSP stapling, PSK, or
depth/TLS 1.3 suites without the OpenSSL shim); a broker with only plain TLS listeners never imports it.

pyOpenSSL's public API covers OCSP stapling (``Context.set_ocsp_server_callback``), depth and TLS 1.3 suites.
PSK has no public API, so it goes through pyOpenSSL's private cffi bindings: ``OpenSSL._util.lib`` (the
``SSL_CTX_set_psk_server_callback``, ``SSL_CTX_use_psk_identity_hint``, ``SSL_session_reused`` and
``SSL_get_verify_result`` functions), ``Context._context``, ``Connection._ssl`` and
``Connection._reverse_mapping``. ``PrivateBindings`` checks every one of them on a throwaway connection when
pyOpenSSL is loaded. Without them (a pyOpenSSL release that renamed or dropped one):

- PSK listeners refuse to start, with an error that says what is missing;
- every other pyOpenSSL listener keeps serving: a resumed session counts as "maybe resumed" (the local CRL is
  checked again, as for a resumed session) and a failed client-certificate check is counted as
  ``certificate_verify_failed`` instead of its precise reason.

Which path runs shows as ``wharf_tls_compat_path{component="pyopenssl",path=private|public|unavailable}``.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

_PRIVATE_FUNCTIONS = ("SSL_CTX_set_psk_server_callback", "SSL_CTX_use_psk_identity_hint", "SSL_session_reused",
                      "SSL_get_verify_result")
_PSK_CALLBACK = "unsigned int(SSL *, const char *, unsigned char *, unsigned int)"


class PrivateBindings:
    """The private cffi bindings, checked when built (``PrivateBindingError`` says which one is missing)."""

    def __init__(self, SSL: ModuleType) -> None:  # the module under its own name
        try:
            util = importlib.import_module("OpenSSL._util")
            ffi, lib = util.ffi, util.lib
            missing = [name for name in _PRIVATE_FUNCTIONS if not hasattr(lib, name)]
            if missing:
                raise PrivateBindingError(f"OpenSSL._util.lib has no {', '.join(missing)}")
            reverse = SSL.Connection._reverse_mapping
            ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
            if not isinstance(ctx._context, ffi.CData):
                raise PrivateBindingError("SSL.Context._context is not the SSL_CTX pointer")
            connection = SSL.Connection(ctx, None)
            if reverse.get(connection._ssl) is not connection:
                raise PrivateBindingError("SSL.Connection._reverse_mapping does not map SSL pointers")
            if lib.SSL_session_reused(connection._ssl) != 0 or lib.SSL_get_verify_result(connection._ssl) != 0:
                raise PrivateBindingError("SSL_session_reused/SSL_get_verify_result answer oddly")
            callback = ffi.callback(_PSK_CALLBACK)(self._server_callback)
        except PrivateBindingError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a new pyOpenSSL changed, the answer is "missing"
            raise PrivateBindingError(f"{type(exc).__name__}: {exc}") from None
        self._SSL = SSL
        self._ffi = ffi
        self._lib = lib
        self._callback = callback
        _callbacks.append(callback)  # OpenSSL may call it for as long as any context that has it lives: forever

    def _server_callback(self, ssl_pointer: Any, identity_pointer: Any, psk_out: Any, max_len: int) -> int:
        # Runs inside OpenSSL: never raise; 0 = unknown identity (handshake fails with unknown_psk_identity).
        try:
            connection = self._SSL.Connection._reverse_mapping.get(ssl_pointer)
            bridge = connection.get_app_data() if connection is not None else None
            if bridge is None or identity_pointer == self._ffi.NULL:
                return 0
            identity = self._ffi.string(identity_pointer)
            secret = bridge.psk_table.get(identity)
            if secret is None or len(secret) > max_len:
                return 0
            self._ffi.memmove(psk_out, secret, len(secret))
            bridge.psk_offered = identity
            return len(secret)
        except Exception:  # noqa: BLE001 - an exception must not cross into C
            return 0

    def enable_psk(self, ctx: Any, hint: bytes) -> bool:
        """Install the PSK server callback on an ``SSL.Context``; False when OpenSSL refused the hint."""
        self._lib.SSL_CTX_set_psk_server_callback(ctx._context, self._callback)
        return bool(self._lib.SSL_CTX_use_psk_identity_hint(ctx._context, hint) == 1)

    def session_reused(self, connection: Any) -> bool:
        return bool(self._lib.SSL_session_reused(connection._ssl) == 1)

    def verify_result(self, connection: Any) -> int:
        return int(self._lib.SSL_get_verify_result(connection._ssl))


class PrivateBindingError(RuntimeError):
    pass


_callbacks: list[Any] = []


@dataclass(frozen=True)
class PyOpenSsl:
    """pyOpenSSL as loaded here: its public modules, and its private bindings when they passed the check."""

    SSL: ModuleType
    crypto: ModuleType
    version: str
    private: PrivateBindings | None
    detail: str  # why ``private`` is None ("" when it is not)

    @property
    def path(self) -> str:
        return "private" if self.private is not None else "public"

    @property
    def ocsp_stapling(self) -> bool:
        return hasattr(self.SSL.Context, "set_ocsp_server_callback")

    def session_reused(self, connection: Any) -> bool | None:
        """Whether the handshake resumed a session; None when that cannot be known here."""
        return self.private.session_reused(connection) if self.private is not None else None

    def verify_result(self, connection: Any) -> int | None:
        """OpenSSL's X509_V_ERR code for the peer certificate; None when that cannot be known here."""
        return self.private.verify_result(connection) if self.private is not None else None


_loaded: PyOpenSsl | None = None
_load_lock = threading.Lock()  # listeners build their contexts in worker threads
load_error = ""  # why pyOpenSSL could not be imported, once ``load()`` returned None


def load() -> PyOpenSsl | None:
    """pyOpenSSL (imported now if it was not), or None when it cannot be imported (``load_error`` says why)."""
    global _loaded
    with _load_lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load() -> PyOpenSsl | None:
    global load_error
    try:
        SSL = importlib.import_module("OpenSSL.SSL")
        crypto = importlib.import_module("OpenSSL.crypto")
        version = str(getattr(importlib.import_module("OpenSSL"), "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - a broken install is "unavailable", whatever it raised
        load_error = f"{type(exc).__name__}: {exc}"
        return None
    try:
        private: PrivateBindings | None = PrivateBindings(SSL)
        detail = ""
    except PrivateBindingError as exc:
        private, detail = None, str(exc)
    return PyOpenSsl(SSL, crypto, version, private, detail)


def forget() -> None:
    """Load again at the next ``load()`` (tests that change what pyOpenSSL offers)."""
    global _loaded, load_error
    with _load_lock:
        _loaded, load_error = None, ""
