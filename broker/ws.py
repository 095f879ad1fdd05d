"""MQTT over WebSocket (ws and wss listeners) on aiohttp's server.

Each upgraded websocket is wrapped in ``WebSocketTransport``, a small ``asyncio.Transport`` adapter, and handed
to the same MQTT protocol object the tcp/ssl listeners use: the protocol never knows which transport it is on.
MQTT travels in binary frames (a frame may hold several packets or part of one); a text frame closes the
connection, as MQTT 5.0 section 6 requires.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .config.model import WebsocketOptions

if TYPE_CHECKING:
    from .listeners import Listener

log = logging.getLogger("wharf.ws")

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class WebSocketTransport(asyncio.Transport):
    """An ``asyncio.Transport`` over one aiohttp websocket."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__(extra={"websocket": ws, "subprotocol": ws.ws_protocol, "path": request.path})
        self._ws = ws
        self._request = request
        self._protocol: asyncio.Protocol | None = None
        self._buffer = bytearray()
        self._wakeup = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._aborted = False
        self._writing_paused = False
        self._high = _HIGH_WATER
        self._low = _LOW_WATER
        self._writer: asyncio.Task | None = None

    # -- asyncio.BaseTransport
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        # peername, sockname, ssl_object, peercert, cipher, socket: those of the underlying connection.
        transport = self._request.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Flush what is buffered, then close the websocket."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        self._reading.set()  # a reader paused by flow control must notice the close

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    # -- reading
    def is_reading(self) -> bool:
        return self._reading.is_set() and not self._closing

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    # -- writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._buffer += data
        self._wakeup.set()
        if not self._writing_paused and len(self._buffer) > self._high and self._protocol is not None:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("websocket transports cannot half-close")

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = _HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def abort(self) -> None:
        """Drop the connection now, without flushing."""
        self._closing = True
        self._aborted = True
        self._buffer.clear()
        self._wakeup.set()
        self._reading.set()
        if self._request.transport is not None:
            self._request.transport.abort()

    # -- driving
    async def run(self, protocol: asyncio.Protocol) -> None:
        """Feed the protocol until either side closes; then ``connection_lost`` exactly once."""
        self._protocol = protocol
        self._writer = asyncio.create_task(self._write_loop())
        error: BaseException | None = None
        protocol.connection_made(self)
        try:
            while not self._closing:
                if not self._reading.is_set():
                    await self._reading.wait()
                    continue
                message = await self._ws.receive()
                if message.type == WSMsgType.BINARY:
                    self._protocol.data_received(message.data)
                elif message.type == WSMsgType.TEXT:
                    log.info("websocket %s sent a text frame: closing (MQTT needs binary frames)",
                             self.get_extra_info("peername"))
                    self.abort()
                elif message.type == WSMsgType.ERROR:
                    error = message.data if isinstance(message.data, BaseException) else ConnectionError(
                        str(message.data))
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
        except (ConnectionError, asyncio.CancelledError) as exc:
            error = exc
        except Exception as exc:  # a protocol bug: drop this connection, as asyncio's own transports do
            log.exception("websocket connection %s failed", self.get_extra_info("peername"))
            error = exc
            self.abort()
        finally:
            self._closing = True
            self._wakeup.set()
            if error is not None:
                self._writer.cancel()  # nobody left to flush to
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), 5.0)
            except (asyncio.TimeoutError, asyncio.CancelledError, ConnectionError):
                self._writer.cancel()
            self._protocol.connection_lost(error if isinstance(error, Exception) else None)
            if isinstance(error, asyncio.CancelledError):
                raise error

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._buffer:
                    if self._closing:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                data = bytes(self._buffer)
                self._buffer.clear()
                await self._ws.send_bytes(data)
                if self._writing_paused and len(self._buffer) <= self._low and self._protocol is not None:
                    self._writing_paused = False
                    self._protocol.resume_writing()
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the reader sees it too
        finally:
            if not self._aborted and not self._ws.closed:
                try:
                    await self._ws.close()
                except (ConnectionError, RuntimeError):
                    pass


def _offered_subprotocols(request: web.Request) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


class WebSocketServer:
    """The aiohttp side of a ws/wss listener: one route, ``websocket.mqtt_path``."""

    def __init__(self, listener: "Listener", options: WebsocketOptions, max_packet_size: int) -> None:
        self.listener = listener
        self.options = options
        # A frame may carry a whole packet plus the start of the next one.
        self.max_msg_size = 2 * max_packet_size + 1024
        self._factory = listener.make_factory(listener.context)
        app = web.Application()
        app.router.add_get(options.mqtt_path, self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)

    async def setup(self) -> None:
        await self._runner.setup()

    @property
    def protocol_factory(self):
        """An asyncio protocol factory for ``create_server``: aiohttp's HTTP server."""
        return self._runner.server

    async def cleanup(self) -> None:
        await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        supported = self.options.supported_subprotocols
        offered = _offered_subprotocols(request)
        if self.options.fail_if_no_subprotocol and not any(p in supported for p in offered):
            return web.Response(status=400, text="MQTT over WebSocket needs a subprotocol: "
                                                 + ", ".join(supported) + "\n")
        ws = web.WebSocketResponse(protocols=supported, max_msg_size=self.max_msg_size, compress=False,
                                   autoping=True)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a websocket upgrade\n")
        if self.listener.admit() is not None:
            return web.Response(status=503, text="listener is at its connection limit\n")
        try:
            await ws.prepare(request)
            transport = WebSocketTransport(ws, request)
            await transport.run(self._factory())  # type: ignore[arg-type]
        finally:
            self.listener.release()
        return ws
