"""Connection slots: a listener's connections counted exactly, from accept to close.

The listener's protocol factory reserves a slot (``ListenerContext.reserve``) when the connection is accepted,
before the PROXY header and before the TLS handshake, and makes a ``SlotHolder`` the connection's outermost
protocol. The transport reports every connection it made lost exactly once, to its outermost protocol, so the
holder gives the slot back exactly once: after an MQTT session, and equally after a TLS handshake that failed or
timed out, or a PROXY header that never came, when the MQTT protocol never heard of the connection.

A layer that steps aside by installing the next protocol on the raw transport (``transport.set_protocol``, as
the PROXY header gate does) would take the holder out of the transport's sight; with ``steps_aside`` the holder
hands its inner protocol a ``HeldTransport``, whose ``set_protocol`` swaps the holder's inner protocol instead.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .listener_context import ListenerContext


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver ``data`` to a protocol of either kind (a buffered one copies it into its own buffer)."""
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)  # type: ignore[attr-defined]
        return
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


class SlotHolder(asyncio.Protocol):
    """The outermost protocol of a connection holding a slot: forwards everything, releases once when lost."""

    __slots__ = ("_inner", "_release", "_steps_aside")

    def __init__(self, inner: asyncio.BaseProtocol, release: Callable[[], None], steps_aside: bool = False) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release
        self._steps_aside = steps_aside

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(HeldTransport(transport, self) if self._steps_aside else transport)

    def data_received(self, data: bytes) -> None:
        _feed(self._inner, data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        self._inner.connection_lost(exc)

    def replace_inner(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner = protocol


class BufferedSlotHolder(SlotHolder, asyncio.BufferedProtocol):
    """The holder for a buffered inner protocol (the stdlib TLS protocol): no copy on the way in."""

    __slots__ = ()

    def get_buffer(self, sizehint: int):
        return self._inner.get_buffer(sizehint)  # type: ignore[attr-defined]

    def buffer_updated(self, nbytes: int) -> None:
        self._inner.buffer_updated(nbytes)  # type: ignore[attr-defined]


def hold_slot(inner: asyncio.BaseProtocol, release: Callable[[], None], steps_aside: bool = False) -> SlotHolder:
    if isinstance(inner, asyncio.BufferedProtocol) and not steps_aside:
        return BufferedSlotHolder(inner, release)
    return SlotHolder(inner, release, steps_aside)


class HeldTransport:
    """The raw transport as a protocol that steps aside sees it: ``set_protocol`` keeps the holder in place.
    Everything else is the raw transport's own (bound methods included, so writes cost nothing extra)."""

    __slots__ = ("_raw", "_holder")

    def __init__(self, raw: asyncio.BaseTransport, holder: SlotHolder) -> None:
        self._raw = raw
        self._holder = holder

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._holder.replace_inner(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._holder._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def counted_factory(context: ListenerContext, factory: Callable[[], asyncio.BaseProtocol]) -> Callable:
    """``factory`` with every connection counted in ``context`` and no limit (for servers built by hand)."""

    def counted() -> asyncio.BaseProtocol:
        context.reserve(None)
        return hold_slot(factory(), context.release)

    return counted
