"""asyncio's TLS protocol without a private read buffer per connection.

When something must run before the handshake (the connection-slot gate, a PROXY protocol header), the stdlib
backend builds asyncio's ``SSLProtocol`` itself instead of letting the event loop do it. That class gives every
connection its own zero-filled 256 KiB read buffer: ten thousand idle TLS clients would hold 2.5 GiB. Its bytes
only pass through, though: ``buffer_updated`` copies them into the connection's TLS memory BIO before the event
loop reads any other socket (both asyncio's selector loop and uvloop call ``get_buffer`` and ``buffer_updated``
back to back for one read), so one buffer per event loop serves every connection on it.
"""

from __future__ import annotations

import asyncio
import weakref
from asyncio import sslproto

_READ_SIZE = 256 * 1024  # what asyncio reads per call; also the largest plaintext chunk handed on at once
_shared_buffers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview]" = weakref.WeakKeyDictionary()


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

    def __init__(self, loop: asyncio.AbstractEventLoop, *args, **kwargs) -> None:
        self._lean_max_size = 0
        super().__init__(loop, *args, **kwargs)
        self._lean_max_size = _READ_SIZE
        self._ssl_buffer_view = _read_buffer(loop)

    def get_buffer(self, n: int) -> memoryview:
        return self._ssl_buffer_view
