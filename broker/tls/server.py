"""``TlsServer``: the asyncio server of a TLS listener, able to rebind itself when a live option change needs it.

The listener layer keeps this object; when an ``update_options`` changes something fixed per listening socket
(the backend, the stdlib handshake timeout), the runtime closes the old listening socket and binds the same
address again. Connections accepted before stay open on the old one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .runtime import TlsListenerRuntime


class TlsServer:
    def __init__(self, runtime: "TlsListenerRuntime", protocol_factory: Callable[[], asyncio.Protocol], host: Any,
                 port: int, backlog: int, kwargs: dict,
                 pre_tls: Callable[[Callable[[], asyncio.BaseProtocol]], Callable] | None = None) -> None:
        self._runtime = runtime
        self._protocol_factory = protocol_factory
        self._host = host
        self._port = port
        self._backlog = backlog
        self._kwargs = kwargs
        self._pre_tls = pre_tls
        self._server: asyncio.AbstractServer | None = None
        self._retired: list[asyncio.AbstractServer] = []
        self._closed = False
        self._forever: asyncio.Future | None = None

    async def bind(self) -> None:
        factory, tls_kwargs = self._runtime._server_args(self._protocol_factory, self._pre_tls is not None)
        if self._pre_tls is not None:
            factory = self._pre_tls(factory)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, self._host, self._port, backlog=self._backlog,
                                                **tls_kwargs, **self._kwargs)
        if self._port == 0:
            # Rebinding must keep the address the listener was given.
            self._port = self._server.sockets[0].getsockname()[1]

    async def rebind(self) -> None:
        if self._closed or self._server is None:
            return
        old = self._server
        old.close()
        self._retired.append(old)
        await self.bind()

    @property
    def sockets(self):
        return self._server.sockets if self._server is not None else ()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start_serving(self) -> None:
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        # Not the inner server's serve_forever: that one would end at a rebind.
        if self._forever is None:
            self._forever = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._forever)

    def close(self) -> None:
        self._closed = True
        if self._forever is not None and not self._forever.done():
            self._forever.set_result(None)
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        for server in [*self._retired, self._server]:
            if server is not None:
                server.close()
                await server.wait_closed()

    async def __aenter__(self) -> "TlsServer":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()
        await self.wait_closed()
