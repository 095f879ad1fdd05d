"""Wiring: one ``BrokerApp`` holds the broker, its listeners, the admin API and the read-only metrics port, and
runs them on an event loop.

Signals: SIGTERM and SIGINT stop gracefully (no new connections, then ``Broker.shutdown()`` disconnects every
client: 5.0 clients get DISCONNECT "server shutting down"); SIGHUP reloads the certificates of every TLS
listener at once, and the password and ACL files.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from typing import Any, Callable

from .config.loader import iter_listeners
from .config.model import BrokerConfig
from .listeners import Listener, build_listeners
from .store import StoreError
from .tasks import spawn

log = logging.getLogger("wharf.app")


class StartupError(RuntimeError):
    """The broker could not start (a port in use, unusable certificates, ...); nothing is left running."""


class BrokerApp:
    def __init__(self, config: BrokerConfig, broker_factory: Callable[[BrokerConfig], Any] | None = None) -> None:
        self.config = config
        self._broker_factory = broker_factory
        self.broker: Any = None
        self.listeners: dict[str, Listener] = {}
        self.admin: Any = None
        self.metrics_server: Any = None
        self.sys_topics: Any = None
        self.ready = False
        self.stopping = False

    # -- life cycle
    async def start(self) -> None:  # noqa: C901 - one step per optional subsystem, in start order
        """Start everything or nothing."""
        factory = self._broker_factory
        if factory is None:
            from .broker import Broker
            factory = Broker
            if self.config.cluster.enable:  # only then is the NATS client imported
                from .cluster import ClusterBroker
                factory = ClusterBroker
        try:
            self.broker = factory(self.config)
        except (ValueError, OSError) as exc:  # e.g. a password or ACL file that does not parse
            raise StartupError(str(exc)) from exc
        try:
            await _maybe_await(getattr(self.broker, "start", None))
        except StoreError as exc:  # names the file and what is wrong with it
            raise StartupError(str(exc)) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            raise StartupError(f"cannot start: {exc!r}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("nats"):  # the cluster backplane refused us
                raise StartupError(f"cluster backplane (NATS): {exc!r}") from exc
            raise
        access = getattr(self.broker, "access", None)
        if access is not None:
            access.start()  # password / ACL file watchers
        if hasattr(self.broker, "router"):  # a real broker (tests may inject a stand-in)
            from .sys_topics import SysTopics
            node = getattr(self.broker, "node_name", self.config.node.name)  # a cluster member's own name
            self.sys_topics = SysTopics(self.broker, self.config.sys_topics, node)
            self.sys_topics.start()
        self.listeners = build_listeners(self.config, self.broker.protocol_factory)
        for listener in self.listeners.values():
            if hasattr(listener, "live_channels"):
                listener.live_channels = self._live_channels
        try:
            for listener in self.listeners.values():
                try:
                    await listener.start()
                except OSError as exc:
                    raise StartupError(f"listener {listener.id} cannot bind {listener.config.bind}: "
                                       f"{exc.strerror or exc}") from exc
                except ValueError as exc:  # the TLS layer's TlsConfigError is a ValueError
                    raise StartupError(f"listener {listener.id}: {exc}") from exc
            if self.config.dashboard.enable:
                from .admin.server import AdminServer
                self.admin = AdminServer(self)
                try:
                    await self.admin.start()
                except OSError as exc:
                    raise StartupError(f"admin api cannot bind {self.config.dashboard.listeners.http.bind}: "
                                       f"{exc.strerror or exc}") from exc
            if self.config.prometheus.enable:
                from .admin.metrics_port import MetricsServer
                self.metrics_server = MetricsServer(self.config.prometheus)
                try:
                    await self.metrics_server.start()
                except OSError as exc:
                    raise StartupError(f"metrics port cannot bind {self.config.prometheus.bind}: "
                                       f"{exc.strerror or exc}") from exc
        except BaseException:
            await self.stop()
            raise
        self.ready = True
        log.info("broker %s ready (%d listeners)", self.config.node.name, len(self.listeners))

    async def stop(self) -> None:
        """Stop accepting, disconnect every client, close everything."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        for listener in self.listeners.values():
            listener.stop_accepting()
        if self.sys_topics is not None:
            self.sys_topics.stop()  # before the clients go: no disconnect event storm at shutdown
        if self.broker is not None:
            try:
                await _maybe_await(getattr(self.broker, "shutdown", None))
            except Exception:
                log.exception("broker shutdown failed")
        for listener in self.listeners.values():
            try:
                await listener.stop()
            except Exception:
                log.exception("listener %s did not stop cleanly", listener.id)
        access = getattr(self.broker, "access", None)
        if access is not None:
            await access.stop()
        if self.admin is not None:
            await self.admin.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        log.info("broker stopped")

    # -- operations
    def _live_channels(self) -> list[Any]:
        broker = self.broker
        if not hasattr(broker, "channels"):  # tests may inject a stand-in
            return []
        return [*broker.channels.values(), *getattr(broker, "guests", ())]

    def tls_listeners(self) -> list[Listener]:
        return [listener for listener in self.listeners.values() if hasattr(listener, "reload")]

    async def reload_certificates(self) -> dict[str, Any]:
        """Reload every TLS listener's certificates concurrently; results (or errors) by listener id."""
        targets = self.tls_listeners()
        results = await asyncio.gather(*(listener.reload() for listener in targets),  # type: ignore[attr-defined]
                                       return_exceptions=True)
        outcome = {}
        for listener, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                log.error("certificate reload of %s failed: %s", listener.id, result)
            outcome[listener.id] = result
        return outcome

    def listener_views(self) -> list[dict[str, Any]]:
        """Every configured listener, running or not (disabled ones show ``enable: false``)."""
        views = []
        for kind, name, listener_config in iter_listeners(self.config):
            running = self.listeners.get(f"{kind}:{name}")
            if running is not None:
                views.append(running.status())
            else:
                views.append({"id": f"{kind}:{name}", "type": kind, "name": name, "bind": listener_config.bind,
                              "enable": listener_config.enable, "running": False, "current_connections": 0,
                              "max_connections": listener_config.max_connections})
        return views


async def _maybe_await(method: Callable[[], Any] | None) -> Any:
    if method is None:
        return None
    result = method()
    if inspect.isawaitable(result):
        return await result
    return result


async def serve(config: BrokerConfig, broker_factory: Callable[[BrokerConfig], Any] | None = None) -> int:
    """Run until SIGTERM/SIGINT; the process exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    app = BrokerApp(config, broker_factory)

    def on_hangup() -> None:
        log.info("SIGHUP: reloading certificates of every TLS listener, the password and ACL files")
        spawn(app.reload_certificates())
        access = getattr(app.broker, "access", None)
        if access is not None:
            access.reload()

    def on_stop(signame: str) -> None:
        log.info("%s: shutting down", signame)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        try:
            await app.start()
        except StartupError as exc:
            log.error("%s", exc)
            return 1
        await stop.wait()
        await app.stop()
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``node.event_loop``: uvloop when asked (or ``auto`` and importable), else asyncio's own loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise StartupError("node.event_loop = uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run(config: BrokerConfig) -> int:
    factory = loop_factory(config.node.event_loop)
    log.info("event loop: %s", "uvloop" if factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(config))
