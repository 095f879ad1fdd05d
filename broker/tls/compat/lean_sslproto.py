"""asyncio's TLS protocol without a private read buffer per connection (falls back to asyncio's own).

When something must run before the handshake (the connection-slot gate, a PROXY protocol header), the stdlib
backend builds asyncio's ``SSLProtocol`` itself instead of letting the event loop do it. That class gives every
connection its own zero-filled 256 KiB read buffer: ten thousand idle TLS clients would hold 2.5 GiB. Its bytes
only pass through, though: ``buffer_updated`` copies them into the connection's TLS memory BIO before the event
loop reads any other socket (both asyncio's selector loop and uvloop call ``get_buffer`` and ``buffer_updated``
back to back for one read), so one buffer per event loop serves every connection on it.

What it relies on (asyncio internals, not API): ``SSLProtocol.__init__`` sizes its buffer from ``max_size``,
and ``buffer_updated`` reads what ``get_buffer`` handed out from ``_ssl_buffer_view`` into ``_incoming``.
``check()`` proves exactly that on a throwaway instance when the first TLS listener starts; if it fails,
``protocol_class()`` is asyncio's plain ``SSLProtocol`` (correct, one buffer per connection), and the reason is
logged and shown as ``wharf_tls_compat_path{component="lean_sslproto",path="plain"}``.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from asyncio import sslproto
from typing import Any

_READ_SIZE = 256 * 1024  # what asyncio reads per call; also the largest plaintext chunk handed on at once
_shared_buffers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview]" = weakref.WeakKeyDictionary()
_PROBE = b"wharf-lean-sslproto-probe"


def _read_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    view = _shared_buffers.get(loop)
    if view is None:
        view = _shared_buffers[loop] = memoryview(bytearray(_READ_SIZE))
    return view


class LeanSSLProtocol(sslproto.SSLProtocol):
    """``SSLProtocol`` reading into its event loop's shared buffer."""

    # The base __init__ allocates ``bytearray(self.max_size)``: zero while it runs, the real size afterwards.
    @property
    def max_size(self) -> int:  # type: ignore[override]
        return self._lean_max_size

    def __init__(self, loop: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> None:
        self._lean_max_size = 0
        super().__init__(loop, *args, **kwargs)
        self._lean_max_size = _READ_SIZE
        self._ssl_buffer_view = _read_buffer(loop)

    def get_buffer(self, n: int) -> memoryview:
        return self._ssl_buffer_view


def check(loop: asyncio.AbstractEventLoop) -> str | None:
    """None when asyncio's ``SSLProtocol`` still works the way ``LeanSSLProtocol`` relies on, else why not."""
    try:
        protocol = LeanSSLProtocol(loop, asyncio.Protocol(), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), None,
                                   server_side=True)
        own = getattr(protocol, "_ssl_buffer", None)
        if own is None or len(own) != 0:
            return "SSLProtocol no longer sizes its read buffer from max_size"
        buffer = protocol.get_buffer(-1)
        buffer[:len(_PROBE)] = _PROBE
        protocol.buffer_updated(len(_PROBE))
        incoming = getattr(protocol, "_incoming", None)
        if not isinstance(incoming, ssl.MemoryBIO) or incoming.read() != _PROBE:
            return "SSLProtocol.buffer_updated no longer reads the buffer get_buffer handed out"
    except Exception as exc:  # noqa: BLE001 - any surprise in asyncio's internals means: use the plain class
        return f"{type(exc).__name__}: {exc}"
    return None


def protocol_class(lean: bool) -> type[sslproto.SSLProtocol]:
    return LeanSSLProtocol if lean else sslproto.SSLProtocol
