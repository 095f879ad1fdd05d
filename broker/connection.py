"""One client socket: an ``asyncio.Protocol`` that feeds the codec, writes for the channel and keeps time.

Writes are coalesced: everything the broker produces for this client during one loop iteration is collected
and handed to the transport in one ``write`` at the end of it. While the transport asks us to pause, output
keeps collecting (QoS 1/2 is bounded by the in-flight window; the channel drops QoS 0 beyond a limit).

Timers: the CONNECT must arrive within ``mqtt.idle_timeout``; afterwards the client must send something at
least every keep-alive x ``keepalive_multiplier``. Both deadlines are kept by the broker's ``Deadlines`` (one-second
buckets and one timer for all connections, no timer per connection). A connection that is closed but whose peer
stops reading is aborted after a grace period, so nothing leaks.

Until its CONNACK is sent a peer is not authenticated, so its parser runs under the stricter ``mqtt.connect_*``
limits and parses only one packet (the CONNECT); what the peer sent after it stays raw bytes until the CONNACK
(``_lift_connect_limits``) and is then parsed under the normal limits.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from .auth import peer_identity
from .channel import Channel, ProtocolViolation
from .limits import exceeded
from .listener_context import ListenerContext
from .mqtt import reason_codes as rc
from .mqtt.frame import FrameError, Parser
from .mqtt.properties import PropertyLimits

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("wharf_broker.connection")

# How long a closed connection may take to flush its last bytes before it is aborted.
CLOSE_GRACE = 5.0
_CONNACK_BAD_PROTOCOL_V3 = b"\x20\x02\x00\x01"


_limits_of: tuple[object, PropertyLimits, PropertyLimits] | None = None


def _property_limits(settings) -> tuple[PropertyLimits, PropertyLimits]:
    """The property limits before the CONNACK (``connect_*``) and after it, shared by every connection under
    the same ``mqtt`` settings (they are read-only)."""
    global _limits_of
    cached = _limits_of
    if cached is None or cached[0] is not settings:
        cached = _limits_of = (settings, PropertyLimits(
            settings.connect_max_user_properties, settings.connect_max_properties_size,
            "connect_max_user_properties", "connect_max_properties_size"),
            PropertyLimits(settings.max_user_properties, settings.max_properties_size))
    return cached[1], cached[2]


class Connection(asyncio.Protocol):
    __slots__ = ("broker", "listener", "transport", "parser", "channel", "peer", "_peer_text", "last_received",
                 "backlog_bytes", "_loop", "_out", "_flush_pending", "_paused", "_closing", "_lost",
                 "_held", "deadline_slot", "_keepalive_limit", "_abort_handle")

    def __init__(self, broker: "Broker", listener: ListenerContext) -> None:
        self.broker = broker
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        settings = broker.config.mqtt
        connect_max = min(settings.connect_max_packet_size, settings.max_packet_size)
        self.parser = parser = Parser(connect_max, property_limits=_property_limits(settings)[0])
        parser.size_limit = "connect_max_packet_size"
        parser.single = True
        self.peer: tuple | None = None
        self._peer_text: str | None = None  # built when asked for (logs, the admin API): most never are
        self.backlog_bytes = 0
        self._loop = broker.loop
        self.last_received = self._loop.time()
        self._out: list[bytes] = []
        self._flush_pending = False
        self._paused = False
        self._closing = False
        self._lost = False
        self._held: list | None = None  # packets waiting while the CONNECT is being authenticated
        self.deadline_slot = 0  # the ``Deadlines`` bucket this connection waits in (0: none)
        self._keepalive_limit = 0.0
        self._abort_handle: asyncio.TimerHandle | None = None
        self.channel = Channel(broker, self)

    # ---------------------------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = peer[0]
            # Interned: clients behind one load balancer or NAT share one copy of its address.
            self.peer = (sys.intern(host) if type(host) is str else host, peer[1])
        elif peer:
            self._peer_text = str(peer)
        broker = self.broker
        broker.connection_opened(self)
        broker.deadlines.watch(self, self.last_received + broker.config.mqtt.idle_timeout)

    @property
    def peer_text(self) -> str:
        """The peer as ``host:port`` (``[host]:port`` for IPv6), or ``?``."""
        text = self._peer_text
        if text is None:
            peer = self.peer
            if peer is None:
                return "?"
            host, port = peer
            text = self._peer_text = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        return text

    def data_received(self, data: bytes) -> None:
        self.last_received = self._loop.time()
        self.broker.metrics.bytes_received.inc(len(data))
        if self._closing:
            return
        if self._held is not None and self.parser.single:
            # The CONNECT is being authenticated: what follows it waits unparsed for the post-CONNACK limits.
            self.parser.keep(data)
            return
        try:
            packets = self.parser.feed(data)
            error = None
        except FrameError as exc:
            packets, error = exc.packets, exc
        if self._held is not None:
            self._held.extend(packets)
            if error is not None:
                self._held.append(error)
            return
        self._process(packets, error)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self.deadline_slot:
            self.broker.deadlines.forget(self)
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        self._out.clear()
        try:
            self.channel.connection_lost()
        finally:
            self.broker.connection_closed(self)

    @property
    def writing_paused(self) -> bool:
        """The transport's buffer is above its high-water mark: the client is not keeping up."""
        return self._paused

    def pause_writing(self) -> None:
        self._paused = True
        self.backlog_bytes = 0

    def resume_writing(self) -> None:
        self._paused = False
        self.backlog_bytes = 0
        self._flush()

    # ------------------------------------------------------------------------------------------- reading

    def _process(self, packets: list, error: FrameError | None) -> None:
        handle = self.channel.handle
        try:
            remaining = iter(packets)
            for packet in remaining:
                if handle(packet):
                    # The CONNECT is being authenticated: hold everything after it until that is done.
                    self._held = list(remaining)
                    if error is not None:
                        self._held.append(error)
                    if self.transport is not None:
                        self.transport.pause_reading()
                    return
                if self._closing:
                    return
            if self.parser.single and self.channel.connected:
                self._lift_connect_limits()
                return
        except ProtocolViolation as violation:
            self._log_close(str(violation), violation.reason_code)
            self.channel.abort(violation.reason_code, str(violation))
            return
        except Exception:  # noqa: BLE001 - a bug handling one client must not take the broker down
            log.exception("internal error handling client %r from %s", self.channel.client_id, self.peer_text)
            self.channel.abort(rc.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
            return
        if error is not None:
            self._frame_error(error)

    def _lift_connect_limits(self) -> None:
        """The CONNACK accepted the client: the normal limits apply, and what it sent after its CONNECT is
        parsed now."""
        settings = self.broker.config.mqtt
        parser = self.parser
        parser.single = False
        parser.max_packet_size = settings.max_packet_size
        parser.size_limit = "max_packet_size"
        parser.property_limits = _property_limits(settings)[1]
        parser.max_topic_filters = settings.max_topic_filters_per_packet
        try:
            packets = parser.feed(b"")
            error = None
        except FrameError as exc:
            packets, error = exc.packets, exc
        self._process(packets, error)

    def resume_processing(self) -> None:
        """The CONNECT's authentication finished: go on with the packets held meanwhile."""
        held, self._held = self._held or [], None
        if self._closing:
            return
        if self.transport is not None:
            self.transport.resume_reading()
        error = held.pop() if held and isinstance(held[-1], FrameError) else None
        self._process(held, error)

    def _frame_error(self, error: FrameError) -> None:
        channel = self.channel
        self._log_close(f"bad packet: {error}", error.reason_code)
        if error.limit is not None:
            exceeded(error.limit)
        elif error.reason_code == rc.PACKET_TOO_LARGE:
            exceeded("max_packet_size")
        if not channel.connect_received:
            if error.reason_code == rc.UNSUPPORTED_PROTOCOL_VERSION:
                # We cannot speak its version, so answer the way every version understands.
                self.write(_CONNACK_BAD_PROTOCOL_V3)
                self.close()
                return
            if self.parser.version == 5:  # a broken 5.0 CONNECT gets a 5.0 CONNACK with the reason
                channel.version, channel.v5, channel.connect_received = 5, True, True
        channel.abort(error.reason_code, str(error))

    def _log_close(self, why: str, reason_code: int | None = None) -> None:
        code = f" (reason 0x{reason_code:02x})" if reason_code is not None else ""
        log.info("closing connection of client %r from %s on %s: %s%s", self.channel.client_id, self.peer_text,
                 self.listener.id, why, code)

    # ------------------------------------------------------------------------------------------- writing

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._out.append(data)
        if self._paused:
            self.backlog_bytes += len(data)
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def output_mark(self) -> int:
        """Where the next write would go in the pending output (for ``write_at``)."""
        return len(self._out)

    def write_at(self, mark: int, data: bytes) -> None:
        """Write ``data`` ahead of whatever was written since ``output_mark()`` returned ``mark`` (same loop
        iteration): an acknowledgement goes out before the copies its PUBLISH produced for this same client."""
        if self._closing:
            return
        out = self._out
        out.insert(min(mark, len(out)), data)
        if self._paused:
            self.backlog_bytes += len(data)
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def write_parts(self, head: bytes, middle: bytes, tail: bytes) -> None:
        """Write one packet given in three pieces (a shared PUBLISH encoding around its packet id)."""
        if self._closing:
            return
        out = self._out
        out.append(head)
        out.append(middle)
        out.append(tail)
        if self._paused:
            self.backlog_bytes += len(head) + len(tail) + 2
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out = self._out
        transport = self.transport
        if not out or self._paused or self._lost or transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        transport.write(data)
        self.broker.metrics.bytes_sent.inc(len(data))
        out.clear()

    def close(self) -> None:
        """Flush what is pending and close; abort if the peer does not take the last bytes in time."""
        if self._closing:
            return
        if self._out and not self._lost and self.transport is not None:
            data = b"".join(self._out)
            self.transport.write(data)
            self.broker.metrics.bytes_sent.inc(len(data))
        self._closing = True
        self._out.clear()
        if self.transport is not None and not self._lost:
            self.transport.close()
            self._abort_handle = self._loop.call_later(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        if not self._lost and self.transport is not None:
            self.transport.abort()

    # -------------------------------------------------------------------------------------------- timers

    def connect_arrived(self) -> None:
        """The CONNECT is here: the idle timeout no longer applies (the keep-alive starts with the CONNACK)."""
        if self.deadline_slot:
            self.broker.deadlines.forget(self)

    def start_keepalive(self, limit: float) -> None:
        """Close the connection when nothing arrives for ``limit`` seconds (0: never)."""
        self._keepalive_limit = limit
        deadlines = self.broker.deadlines
        if limit > 0:
            deadlines.watch(self, self.last_received + limit)
        elif self.deadline_slot:
            deadlines.forget(self)

    def deadline_reached(self, now: float) -> float | None:
        """Called by ``Deadlines`` once this connection's deadline passed: close it when its time is up, else
        return its next deadline."""
        if self._closing:
            return None
        if not self.channel.connect_received:
            exceeded("idle_timeout")
            self._log_close("no CONNECT within the idle timeout")
            self.close()
            return None
        limit = self._keepalive_limit
        if limit <= 0:
            return None
        silent = now - self.last_received
        if silent >= limit:
            self._log_close(f"keep-alive timeout ({silent:.1f}s without a packet)", rc.KEEP_ALIVE_TIMEOUT)
            self.channel.kick(rc.KEEP_ALIVE_TIMEOUT, "keep-alive timeout")
            return None
        return self.last_received + limit

    # -------------------------------------------------------------------------------------------- details

    def tls_info(self) -> dict:
        """TLS version, cipher and peer certificate subject, when this is a TLS connection."""
        transport = self.transport
        if transport is None:
            return {}
        identity = peer_identity(transport)
        if identity is not None:
            return {"tls_version": identity.tls_version, "tls_cipher": identity.cipher,
                    "peer_cert_subject": getattr(identity, "dn", None)}
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return {}
        # No TLS layer installed: what the standard library tells.
        cipher = ssl_object.cipher()
        cert = ssl_object.getpeercert() or {}
        subject = ",".join(f"{key}={value}" for rdn in reversed(cert.get("subject", ())) for key, value in rdn)
        return {"tls_version": ssl_object.version(), "tls_cipher": cipher[0] if cipher else None,
                "peer_cert_subject": subject or None}
