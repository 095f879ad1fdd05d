"""The PROXY protocol (HAProxy's, versions 1 and 2) in front of tcp, ssl and ws listeners (``proxy_protocol = true``).

A load balancer that terminates nothing but TCP prepends one header naming the real client. ``ProxyProtocolGate``
reads that header (within ``proxy_protocol_timeout``), then hands the connection to the real protocol with a
transport whose ``peername`` is the client's address. On an ssl listener the header comes before the TLS
handshake (the TLS runtime's ``pre_tls`` hook puts the gate in front of TLS).

Who may send a header: only peers inside the listener's ``proxy_protocol_trusted_cidrs`` (``TrustedPeers``). The
TCP peer address is checked in ``connection_made``, before a single byte is read: a connection from anywhere
else is aborted (reason ``untrusted_peer``), whatever it would have sent, so a client that reaches the listener
directly can neither forge its source address nor a TLS identity. A trusted peer must send a valid header, like
HAProxy's ``accept-proxy``: a connection from the balancer without one is dropped too (``bad_header``,
``timeout``); it is never taken as a direct client, which would give every client behind a misconfigured
balancer the balancer's own address. Refusals go to ``on_refused(reason)``; untrusted peers are logged at
WARNING, at most once per ``LOG_EVERY`` seconds per listener with the number left out in between.

A v2 header may carry TLVs; when the balancer terminated TLS itself and says the client presented a certificate
it verified (``PP2_TYPE_SSL`` with ``PP2_CLIENT_CERT_CONN`` and verify = 0), its CN
(``PP2_SUBTYPE_SSL_CN``) is offered to the broker as the transport's ``proxy_ssl_cn`` extra, usable by
authenticators and ACL rules like a certificate CN seen by the broker itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Any, Callable, Iterable

log = logging.getLogger("wharf.listeners")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included
V2_MAX_PAYLOAD = 512


class ProxyHeaderError(ValueError):
    pass


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_EVERY = 10.0


def parse_cidr(text: str) -> Network:
    """One entry of ``proxy_protocol_trusted_cidrs``: ``10.0.0.0/8``, ``2001:db8::/32``, or one address (a /32 or
    /128). Host bits may be set (``10.1.2.3/8`` means ``10.0.0.0/8``). Raises ``ValueError``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an empty entry is not a network")
    return ipaddress.ip_network(text.strip(), strict=False)


class TrustedPeers:
    """The networks whose connections may carry a PROXY header (the load balancers). ``admits`` runs once per
    accepted connection, on integers (several times cheaper than ``ipaddress`` objects)."""

    __slots__ = ("networks", "_v4", "_v6")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(parse_cidr(cidr) for cidr in cidrs)
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 6)

    def __bool__(self) -> bool:
        return bool(self.networks)

    @property
    def open_to_all(self) -> bool:
        """True when a /0 is listed: every address may send a header."""
        return any(network.prefixlen == 0 for network in self.networks)

    def admits(self, peername: Any) -> bool:
        """Whether the TCP peer ``peername`` (a socket address tuple) is inside a trusted network."""
        if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
            return False  # not an IP socket: nothing to match
        host = peername[0]
        try:
            if ":" in host:
                packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
                if packed[:12] == _V4_MAPPED and _inside(int.from_bytes(packed[12:], "big"), self._v4):
                    return True  # ::ffff:a.b.c.d on a dual-stack socket
                return _inside(int.from_bytes(packed, "big"), self._v6)
            return _inside(int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"), self._v4)
        except OSError:
            return False


_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _inside(address: int, networks: tuple[tuple[int, int], ...]) -> bool:
    return any(address & mask == network for network, mask in networks)


class RefusalLog:
    """Logs refused untrusted peers with their address, at most once per ``every`` seconds per listener."""

    __slots__ = ("listener_id", "every", "_next", "_skipped")

    def __init__(self, listener_id: str, every: float = LOG_EVERY) -> None:
        self.listener_id = listener_id
        self.every = every
        self._next = 0.0
        self._skipped = 0

    def untrusted(self, peername: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        skipped, self._skipped, self._next = self._skipped, 0, now + self.every
        more = f" ({skipped} more since the last such line)" if skipped else ""
        log.warning("listener %s: closed a connection from %s, which is not in proxy_protocol_trusted_cidrs: "
                    "only the load balancer may send a PROXY header%s", self.listener_id, _peer_text(peername), more)


def _peer_text(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host = str(peername[0])
        return f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
    return repr(peername)


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
    """Admits only trusted peers, reads their PROXY header, then steps aside for ``inner``."""

    __slots__ = ("_inner", "_timeout", "_listener_id", "_trusted", "_on_refused", "_refusal_log", "_buffer",
                 "_transport", "_timer")

    def __init__(self, inner: asyncio.Protocol, timeout: float, listener_id: str, trusted: TrustedPeers,
                 on_refused: Callable[[str], None] | None = None, refusal_log: RefusalLog | None = None) -> None:
        self._inner = inner
        self._timeout = timeout
        self._listener_id = listener_id
        self._trusted = trusted
        self._on_refused = on_refused
        self._refusal_log = refusal_log
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        if not self._trusted.admits(peername):
            # Before any byte is read: whatever header it sends, a direct client is not believed.
            if self._refusal_log is not None:
                self._refusal_log.untrusted(peername)
            self._refuse("untrusted_peer", quiet=True)
            return
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._refuse, "timeout")

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._buffer += data
        try:
            parsed = parse_header(self._buffer)
        except ProxyHeaderError as exc:
            self._refuse("bad_header", str(exc))
            return
        if parsed is None:
            return
        used, client = parsed
        try:
            extras = v2_tls_extras(self._buffer[:used]) if client is not None else {}
        except ProxyHeaderError as exc:
            self._refuse("bad_header", str(exc))
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

    def _refuse(self, reason: str, detail: str = "no PROXY header in time", quiet: bool = False) -> None:
        """Abort the connection; ``reason`` (untrusted_peer, bad_header, timeout) goes to ``on_refused``."""
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            if not quiet:
                log.info("listener %s: dropped %s: %s", self._listener_id,
                         _peer_text(self._transport.get_extra_info("peername")), detail)
            if self._on_refused is not None:
                self._on_refused(reason)
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
