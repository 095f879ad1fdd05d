"""Listeners: tcp, ssl, ws and wss, one class each behind one interface.

A listener owns its server socket(s), a ``ListenerContext`` shared by every connection it accepts, and the
admission policy (``max_connections``, ``max_conn_rate``). The MQTT protocol itself comes from the broker as a
*factory maker*: ``make_factory(context)`` returns a zero-argument protocol factory (``Broker.protocol_factory``).

When a listener is up it logs, at INFO on the ``wharf.listeners`` logger, exactly::

    listener <type>:<name> on <host>:<port>

with the address really bound (port 0 in the config shows the port the kernel chose; IPv6 hosts in brackets).
Tests and tools parse this line: keep the format stable.

``max_connections`` is exact: the protocol factory takes a slot when the connection is accepted, before any
PROXY header or TLS handshake, and the connection's outermost protocol gives it back when the connection ends,
however it ends (``listener_slots.py``). Connections in a TLS handshake count, so a burst of handshakes cannot
overshoot the limit. ws/wss connections take their slot at the WebSocket upgrade.

``proxy_protocol = true`` puts ``proxy_protocol.ProxyProtocolGate`` first (after admission): only peers in
``proxy_protocol_trusted_cidrs`` may connect and must send a header. A listener without a trusted list refuses to
start (the loader refuses the config first); a /0 in the list is allowed and logged as a WARNING at start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Callable, Iterable

from . import metrics
from .config.loader import format_bind, parse_bind
from .config.model import BrokerConfig, SslOptions
from .config.model import TcpListener as TcpListenerConfig
from .listener_context import ListenerContext
from .listener_slots import hold_slot
from .tasks import cancel_and_wait

log = logging.getLogger("wharf.listeners")

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
FactoryMaker = Callable[[ListenerContext], ProtocolFactory]

# Listeners that are running, by id: the connection gauge reads them when scraped.
_RUNNING: dict[str, "Listener"] = {}


def _connection_samples():
    for listener_id, listener in list(_RUNNING.items()):
        yield {"listener": listener_id}, listener.context.current_connections


CONNECTIONS = metrics.REGISTRY.register(metrics.CallbackGauge(
    "wharf_listener_connections", "Open MQTT connections per listener", ("listener",), _connection_samples))
ACCEPTED = metrics.REGISTRY.counter(
    "wharf_listener_connections_accepted_total", "Connections admitted by a listener", ("listener",))
REFUSED = metrics.REGISTRY.counter(
    "wharf_listener_connections_refused_total",
    "Connections refused by a listener (reason: max_connections, max_conn_rate, proxy_protocol)",
    ("listener", "reason"))
PROXY_REFUSED = metrics.REGISTRY.counter(
    "wharf_proxy_protocol_refused_total",
    "Connections dropped by a listener's PROXY protocol gate (reason: untrusted_peer, bad_header, timeout)",
    ("listener", "reason"))
PROXY_REASONS = ("untrusted_peer", "bad_header", "timeout")


class TlsUnavailable(RuntimeError):
    """The TLS package is missing from this installation."""


class _TokenBucket:
    """``max_conn_rate``: at most ``rate`` new connections per second, with a burst of one second's worth."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Refused(asyncio.Protocol):
    """Stands in for the MQTT protocol on a connection over the limit: closes it at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass


class Listener:
    """What every listener kind offers to the application and the admin API."""

    type = "tcp"

    def __init__(self, name: str, config: TcpListenerConfig, make_factory: FactoryMaker,
                 broker_config: BrokerConfig) -> None:
        self.name = name
        self.id = f"{self.type}:{name}"
        self.config = config
        self.broker_config = broker_config
        self.make_factory = make_factory
        mqtt = broker_config.mqtt
        self.context = ListenerContext(
            id=self.id, type=self.type, mountpoint=config.mountpoint,
            peer_cert_as_username=config.peer_cert_as_username or mqtt.peer_cert_as_username,
            peer_cert_as_clientid=config.peer_cert_as_clientid or mqtt.peer_cert_as_clientid,
            topic_alias_out=config.topic_alias_out == "on")
        self.bind = config.bind  # the real address once started
        self.running = False
        self._server: asyncio.AbstractServer | None = None
        self._rate = _TokenBucket(config.max_conn_rate) if config.max_conn_rate else None
        self._accepted = ACCEPTED.labels(listener=self.id)
        self._refused = {reason: REFUSED.labels(listener=self.id, reason=reason)
                         for reason in ("max_connections", "max_conn_rate", "proxy_protocol")}
        self._proxy_trust: Any = None  # proxy_protocol.TrustedPeers, built at the first start

    @property
    def enable(self) -> bool:
        return self.config.enable

    @property
    def max_connections(self) -> int | None:
        return self.config.max_connections

    # -- admission
    def admit(self) -> str | None:
        """None when a new connection may proceed, its slot taken (``release()`` gives it back), else the reason
        it is refused (and counted)."""
        limit = self.config.max_connections
        if limit is not None and self.context.current_connections >= limit:
            reason = "max_connections"
        elif self._rate is not None and not self._rate.take():
            reason = "max_conn_rate"
        else:
            self.context.reserve(None)
            self._accepted.inc()
            return None
        self._refused[reason].inc()
        log.debug("listener %s refused a connection: %s", self.id, reason)
        return reason

    def release(self) -> None:
        """Give back the slot of a connection ``admit()`` let in."""
        self.context.release()

    def guarded_factory(self, inner: ProtocolFactory | None = None) -> ProtocolFactory:
        """``inner`` (default: the MQTT protocol; on ssl listeners the TLS protocol) behind admission and, if
        configured, the PROXY header; each admitted connection holds its slot until it ends."""
        inner = inner or self.make_factory(self.context)
        admit, release = self.admit, self.release
        steps_aside = bool(self.config.proxy_protocol)
        if steps_aside:
            inner = self._behind_proxy_header(inner)

        def factory() -> asyncio.BaseProtocol:
            if admit() is not None:
                return _Refused()
            return hold_slot(inner(), release, steps_aside)

        return factory

    def _trusted_proxies(self):
        """The listener's ``proxy_protocol_trusted_cidrs``, parsed once; raises ``ValueError`` when empty."""
        from .proxy_protocol import TrustedPeers

        if self._proxy_trust is None:
            trusted = TrustedPeers(self.config.proxy_protocol_trusted_cidrs)
            if not trusted:
                raise ValueError(f"listener {self.id}: proxy_protocol = true needs proxy_protocol_trusted_cidrs "
                                 "(the load balancers' addresses)")
            if trusted.open_to_all:
                log.warning("listener %s: proxy_protocol_trusted_cidrs holds a /0: any client that reaches this "
                            "listener can send a PROXY header and choose its source address and TLS identity",
                            self.id)
            self._proxy_trust = trusted
        return self._proxy_trust

    def _behind_proxy_header(self, inner: ProtocolFactory) -> ProtocolFactory:
        from .proxy_protocol import ProxyProtocolGate, RefusalLog

        timeout = self.config.proxy_protocol_timeout
        trusted = self._trusted_proxies()
        refusal_log = RefusalLog(self.id)
        total = self._refused["proxy_protocol"]
        by_reason = {reason: PROXY_REFUSED.labels(listener=self.id, reason=reason) for reason in PROXY_REASONS}

        def refused(reason: str) -> None:
            total.inc()
            by_reason[reason].inc()

        return lambda: ProxyProtocolGate(inner(), timeout, self.id, trusted,  # type: ignore[arg-type]
                                         refused, refusal_log)

    # -- life cycle
    async def start(self) -> None:
        host, port = parse_bind(self.config.bind)
        self._server = await self._create_server(host or None, port)
        self._started()

    async def _create_server(self, host: str | None, port: int) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self.guarded_factory(), host, port, reuse_address=True, backlog=1024)

    def _started(self) -> None:
        sockets = getattr(self._server, "sockets", None) or ()
        if sockets:
            sockname = sockets[0].getsockname()
            self.bind = format_bind(sockname[0], sockname[1])
        self.running = True
        _RUNNING[self.id] = self
        log.info("listener %s on %s", self.id, self.bind)

    def stop_accepting(self) -> None:
        """Stop taking new connections; open ones stay (the broker disconnects them)."""
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        self.stop_accepting()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            except asyncio.TimeoutError:
                log.warning("listener %s: open connections outlived the shutdown", self.id)
            self._server = None
        if self.running:
            log.info("listener %s stopped", self.id)
        self.running = False
        _RUNNING.pop(self.id, None)

    # -- what the admin API shows
    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "name": self.name,
            "bind": self.bind,
            "enable": self.config.enable,
            "running": self.running,
            "current_connections": self.context.current_connections,
            "max_connections": self.config.max_connections,
        }

    def describe(self) -> dict[str, Any]:
        """``status()`` plus the listener's options (never key material or passwords)."""
        options = dataclasses.asdict(self.config)
        options.pop("ssl_options", None)
        return {**self.status(), "options": options}


class TcpListener(Listener):
    type = "tcp"


class _TlsMixin:
    """ssl and wss: socket + TLS come from the TLS package's per-listener runtime.

    A listener whose certificate files are refused at start (the checks of ``tls/validation.py``) with no last
    accepted certificate to serve instead does not listen: it waits, ``down_reason`` (the reason code, shown by
    ``/readyz``) and ``down_error`` (the message, in its status) say why, and it starts as soon as a re-check
    (every ``reload_interval``, SIGHUP, the admin API's reload) finds valid files. It never serves the refused
    ones.
    """

    runtime: Any = None
    # Set by the application: the connected clients' channels (every listener's), for client_ca_guard.
    live_channels: Callable[[], Iterable[Any]] | None = None
    id: str
    config: Any
    broker_config: BrokerConfig
    down_reason: str | None = None
    down_error: str | None = None
    _waiting: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            await super().start()  # type: ignore[misc]
        except ValueError as exc:  # TlsConfigError
            from .tls.validation import REASONS

            if getattr(exc, "reason", None) not in REASONS:
                raise  # a bad option, not refused material: the broker does not start
            self._refused_at_start(exc)
            self._waiting = asyncio.get_running_loop().create_task(self._wait_for_material())

    def _refused_at_start(self, exc: Exception) -> None:
        if self.runtime is not None:
            self.runtime.metrics.remove()
            self.runtime = None
        if str(exc) != self.down_error:
            log.error("listener %s not started: its certificate is refused and none was accepted before: %s; "
                      "not ready until the files hold a valid one", self.id, exc)
        self.down_reason, self.down_error = getattr(exc, "reason", "Invalid"), str(exc)

    async def _try_start(self) -> bool:
        try:
            await super().start()  # type: ignore[misc]
        except ValueError as exc:
            self._refused_at_start(exc)
            return False
        self.down_reason = self.down_error = None
        return True

    async def _wait_for_material(self) -> None:
        while True:
            await asyncio.sleep(float(self.config.ssl_options.reload_interval))
            if await self._try_start():
                self._waiting = None
                return

    async def stop(self) -> None:
        await cancel_and_wait(self._waiting)
        self._waiting = None
        await super().stop()  # type: ignore[misc]

    def _new_runtime(self):
        try:
            from .tls import TlsListenerRuntime
        except ImportError as exc:
            raise TlsUnavailable(f"listener {self.id}: TLS support is not available ({exc})") from exc
        runtime = TlsListenerRuntime(self.id, self.config.ssl_options, psk=self.broker_config.psk_authentication,
                                     crl_cache=self.broker_config.crl_cache, accepted_dir=self._accepted_dir())
        channels = self.live_channels
        if channels is not None:  # for ssl_options.client_ca_guard: who is connected here, with which certificate
            from .tls.client_ca_check import connected_certificates

            runtime.client_certificates = lambda: connected_certificates(channels(), self.id)
        return runtime

    def _accepted_dir(self):
        """Where the last accepted certificate is kept for a restart with refused files: beside the durable
        store (a persistent volume in operator-managed pods); nowhere without durable storage."""
        durable = self.broker_config.durable_storage
        if not durable.enable:
            return None
        from .store.api import resolve_data_dir

        return resolve_data_dir(durable.data_dir) / "tls-accepted"

    async def reload(self, expected_fingerprint: str | None = None, timeout: float = 0.0,
                     client_ca_sha256: str | None = None):
        """Re-read the certificate files now (the runtime validates, proves and swaps, or keeps the old one);
        a listener waiting for valid files tries to start."""
        if self._waiting is not None:
            from .tls import ReloadResult

            await cancel_and_wait(self._waiting)  # one attempt at a time
            if await self._try_start():
                self._waiting = None
                return ReloadResult(True, self.runtime.current_generation.fingerprint)
            self._waiting = asyncio.get_running_loop().create_task(self._wait_for_material())
            return ReloadResult(False, None, self.down_error)
        return await self.runtime.reload(expected_fingerprint=expected_fingerprint, timeout=timeout,
                                         client_ca_sha256=client_ca_sha256)

    async def update_ssl_options(self, options: SslOptions):
        """Apply new ``ssl_options`` live; the runtime refuses them whole if they are bad."""
        if self._waiting is not None:  # not listening yet: the next attempt to start uses them
            from .tls import validate_options

            validate_options(options, self.broker_config.psk_authentication)
            self.config.ssl_options = options
            return await self.reload()
        result = await self.runtime.update_options(options)
        self.config.ssl_options = options
        return result

    def tls_status(self) -> dict[str, Any]:
        if self.down_error is not None:
            return {"listener": self.id, "running": False, "last_error": self.down_error,
                    "last_refusal": {"reason": self.down_reason, "message": self.down_error},
                    "waiting_for_valid_certificate": True}
        return self.runtime.status() if self.runtime is not None else {}

    def ssl_options_view(self) -> dict[str, Any]:
        return redacted_ssl_options(self.config.ssl_options)


def redacted_ssl_options(options: SslOptions) -> dict[str, Any]:
    """The options as shown to operators: paths yes, secrets never."""
    view = dataclasses.asdict(options)
    view["password"] = "******" if options.password else ""
    return view


class SslListener(_TlsMixin, Listener):
    type = "ssl"

    async def _create_server(self, host: str | None, port: int) -> asyncio.AbstractServer:
        self.runtime = self._new_runtime()
        await self.runtime.start()
        # Admission (and the PROXY header, which comes before the TLS handshake) sit ahead of TLS, so that a
        # connection holds its slot from accept on and gives it back even if its handshake fails.
        try:
            return await self.runtime.create_server(self.make_factory(self.context), host, port,
                                                    pre_tls=self.guarded_factory)
        except BaseException:
            await self.runtime.stop()
            raise

    async def stop(self) -> None:
        await super().stop()
        if self.runtime is not None:
            await self.runtime.stop()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ssl_options": self.ssl_options_view(), "tls": self.tls_status()}


class WsListener(Listener):
    type = "ws"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ws_server = None

    async def _create_server(self, host: str | None, port: int) -> asyncio.AbstractServer:
        from .ws import WebSocketServer

        self._ws_server = WebSocketServer(self, self.config.websocket, self.broker_config.mqtt.max_packet_size)
        await self._ws_server.setup()
        factory = self._ws_server.protocol_factory
        if self.config.proxy_protocol:
            factory = self._behind_proxy_header(factory)
        try:
            return await self._listen(factory, host, port)
        except BaseException:
            await self._ws_server.cleanup()
            raise

    async def _listen(self, factory: ProtocolFactory, host: str | None, port: int) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(factory, host, port, reuse_address=True, backlog=1024)

    async def stop(self) -> None:
        await super().stop()
        if self._ws_server is not None:
            await self._ws_server.cleanup()
            self._ws_server = None

class WssListener(_TlsMixin, WsListener):
    type = "wss"

    async def _listen(self, factory: ProtocolFactory, host: str | None, port: int) -> asyncio.AbstractServer:
        self.runtime = self._new_runtime()
        await self.runtime.start()
        try:
            return await self.runtime.create_server(factory, host, port)
        except BaseException:
            await self.runtime.stop()
            raise

    async def stop(self) -> None:
        await super().stop()
        if self.runtime is not None:
            await self.runtime.stop()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ssl_options": self.ssl_options_view(), "tls": self.tls_status()}


LISTENER_CLASSES: dict[str, type[Listener]] = {
    "tcp": TcpListener, "ssl": SslListener, "ws": WsListener, "wss": WssListener}


def build_listeners(config: BrokerConfig, make_factory: FactoryMaker) -> dict[str, Listener]:
    """Every enabled listener of the config, by id (``enable = false`` ones are skipped)."""
    listeners: dict[str, Listener] = {}
    for kind, cls in LISTENER_CLASSES.items():
        for name, listener_config in getattr(config.listeners, kind).items():
            if not listener_config.enable:
                log.info("listener %s:%s is disabled", kind, name)
                continue
            listener = cls(name, listener_config, make_factory, config)
            listeners[listener.id] = listener
    return listeners

