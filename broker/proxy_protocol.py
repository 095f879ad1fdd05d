"""The PROXY protocol (HAProxy's, versions 1 and 2) in front of tcp, ssl and ws listeners (``proxy_protocol = true``).

A load balancer that terminates nothing but TCP prepends one header naming the real client. ``ProxyProtocolGate``
reads that header (within ``proxy_protocol_timeout``), then hands the connection to the real protocol with a
transport whose ``peername`` is the client's address. A connection without a valid header is dropped: with the
option on, only the load balancer may connect. On an ssl listener the header comes before the TLS handshake
(the TLS runtime's ``pre_tls`` hook puts the gate in front of TLS).

A v2 header may carry TLVs; when the balancer terminated TLS itself and says the client presented a certificate
it verified (``PP2_TYPE_SSL`` with ``PP2_CLIENT_CERT_CONN`` and verify = 0), its CN
(``PP2_SUBTYPE_SSL_CN``) is offered to the broker as the transport's ``proxy_ssl_cn`` extra, usable by
authenticators and ACL rules like a certificate CN seen by the broker itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any, Callable

log = logging.getLogger("wharf.listeners")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included
V2_MAX_PAYLOAD = 512


class ProxyHeaderError(ValueError):
    pass


Address = tuple[str, int]


def parse_header(data: bytes) -> tuple[int, Address | None] | None:
    """(bytes used, client address or None for LOCAL/UNKNOWN), or None when more bytes are needed."""
    if data.startswith(V2_SIGNATURE[:len(data)]) and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if b"PROXY "[:len(data)] == data[:6] and len(data) < 6:
        return None
    if data.startswith(b"PROXY "):
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[int, Address | None] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 header longer than 107 bytes")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return end + 2, None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"bad PROXY v1 header {data[:end]!r}")
    try:
        source = ipaddress.ip_address(parts[2])
        ipaddress.ip_address(parts[3])
        port = int(parts[4])
        int(parts[5])
    except ValueError:
        raise ProxyHeaderError(f"bad PROXY v1 addresses {data[:end]!r}") from None
    if source.version != (4 if parts[1] == "TCP4" else 6) or not 0 <= port <= 65535:
        raise ProxyHeaderError(f"bad PROXY v1 addresses {data[:end]!r}")
    return end + 2, (str(source), port)


def _parse_v2(data: bytes) -> tuple[int, Address | None] | None:
    version_command, family = data[12], data[13]
    length = int.from_bytes(data[14:16], "big")
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyHeaderError(f"bad PROXY v2 version/command byte {version_command:#x}")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes is too long")
    if len(data) < 16 + length:
        return None
    payload = data[16:16 + length]
    used = 16 + length
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own health check
        return used, None
    if family == 0x11 and length >= 12:  # TCP over IPv4
        return used, (str(ipaddress.IPv4Address(payload[0:4])), int.from_bytes(payload[8:10], "big"))
    if family == 0x21 and length >= 36:  # TCP over IPv6
        return used, (str(ipaddress.IPv6Address(payload[0:16])), int.from_bytes(payload[32:34], "big"))
    if family == 0x00:
        return used, None
    raise ProxyHeaderError(f"unsupported PROXY v2 address family {family:#x}")


PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_CN = 0x22
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
_ADDRESS_BLOCK = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}


def _iter_tlvs(data: bytes):
    position = 0
    while position + 3 <= len(data):
        kind, length = data[position], int.from_bytes(data[position + 1:position + 3], "big")
        value = data[position + 3:position + 3 + length]
        if len(value) != length:
            raise ProxyHeaderError("truncated PROXY v2 TLV")
        yield kind, value
        position += 3 + length
    if position != len(data):
        raise ProxyHeaderError("truncated PROXY v2 TLV")


def v2_tls_extras(header: bytes) -> dict[str, Any]:
    """Transport extras from a complete v2 header's TLVs: ``proxy_ssl_cn`` (the verified client certificate's
    CN) when the balancer sent one. Raises ``ProxyHeaderError`` for malformed TLVs."""
    if not header.startswith(V2_SIGNATURE) or len(header) < 16:
        return {}
    skip = _ADDRESS_BLOCK.get(header[13])
    if skip is None or 16 + skip > len(header):
        return {}
    extras: dict[str, Any] = {}
    for kind, value in _iter_tlvs(header[16 + skip:]):
        if kind != PP2_TYPE_SSL or len(value) < 5:
            continue
        client, verify = value[0], int.from_bytes(value[1:5], "big")
        extras["proxy_ssl"] = True
        if not (client & PP2_CLIENT_SSL and client & PP2_CLIENT_CERT_CONN and verify == 0):
            continue  # no certificate, or one the balancer could not verify: no identity
        for sub_kind, sub_value in _iter_tlvs(value[5:]):
            if sub_kind == PP2_SUBTYPE_SSL_CN:
                common_name = sub_value.decode("utf-8", "replace")
                if common_name and common_name.isprintable():
                    extras["proxy_ssl_cn"] = common_name
    return extras


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand bytes read ahead to a protocol, buffered (asyncio's TLS protocol) or not."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        protocol.data_received(data)  # type: ignore[attr-defined]


class ProxiedTransport(asyncio.Transport):
    """The accepted transport, except that ``peername`` is the client the PROXY header named."""

    def __init__(self, transport: asyncio.Transport, peername: Address, extras: dict | None = None) -> None:
        super().__init__({**(extras or {}), "peername": peername,
                          "proxy_peername": transport.get_extra_info("peername")})
        self._transport = transport
        # The hot path goes straight to the real transport.
        self.write = transport.write  # type: ignore[method-assign]
        self.writelines = transport.writelines  # type: ignore[method-assign]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def _force_close(self, exc: BaseException | None) -> None:
        # asyncio's TLS protocol closes its transport this way on a fatal error, e.g. a handshake timeout.
        force_close = getattr(self._transport, "_force_close", None)
        if force_close is not None:
            force_close(exc)
        else:
            self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class ProxyProtocolGate(asyncio.Protocol):
    """Reads the PROXY header, then steps aside for ``inner``."""

    def __init__(self, inner: asyncio.Protocol, timeout: float, listener_id: str,
                 on_refused: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self._timeout = timeout
        self._listener_id = listener_id
        self._on_refused = on_refused
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._refuse, "no PROXY header in time")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            parsed = parse_header(self._buffer)
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        if parsed is None:
            return
        used, client = parsed
        try:
            extras = v2_tls_extras(self._buffer[:used]) if client is not None else {}
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        rest, self._buffer = self._buffer[used:], b""
        handed = ProxiedTransport(transport, client, extras) if client is not None else transport
        transport.set_protocol(self._inner)
        self._inner.connection_made(handed)
        if rest and not transport.is_closing():
            _feed(self._inner, rest)

    def eof_received(self) -> bool:
        self._cancel_timer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _refuse(self, reason: str) -> None:
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            log.info("listener %s: dropped %s: %s", self._listener_id, self._transport.get_extra_info("peername"),
                     reason)
            if self._on_refused is not None:
                self._on_refused()
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
