"""The NATS connection a cluster node runs on: connect (TLS, credentials), JetStream stream and key-value
buckets, and the connection's health for ``/healthz``, ``/readyz`` and the metrics.

The stream ``WHARF_MESSAGES`` captures every QoS 1/2 message crossing the cluster: its JetStream
acknowledgement (the message is stored on a quorum of NATS servers and handed to every node interested in it at
that moment) is what lets the publishing node acknowledge the publisher.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import nats
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

from ..config.model import Cluster
from ..tasks import spawn
from .subjects import DURABLE_SUBJECTS

log = logging.getLogger("wharf_broker.cluster")

STREAM = "WHARF_MESSAGES"
INTEREST_BUCKET = "wharf_interest"
RETAINED_BUCKET = "wharf_retained"
SESSIONS_BUCKET = "wharf_sessions"
CHECKPOINTS_BUCKET = "wharf_checkpoints"
STARTUP_TRIES = 3
STORAGE_SETUP_TRIES = 12


class BackplaneUnavailable(ConnectionError):
    """The node is cut off from NATS: cluster-wide delivery cannot be honoured."""


class Backplane:
    def __init__(self, settings: Cluster, node_name: str, metrics) -> None:
        self.settings = settings
        self.node_name = node_name
        self.nc = None
        self.js = None
        self.kv: dict = {}
        self.connected = False
        self.last_error = ""
        self._metrics = metrics
        self.on_reconnect: list[Callable[[], object]] = []
        self.on_disconnect: list[Callable[[], object]] = []

    async def start(self) -> None:
        nats_settings = self.settings.nats
        options = {"servers": list(nats_settings.servers), "name": self.node_name,
                   "connect_timeout": nats_settings.connect_timeout, "allow_reconnect": True,
                   "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, "ping_interval": 5,
                   "max_outstanding_pings": 2, "disconnected_cb": self._disconnected,
                   "reconnected_cb": self._reconnected, "error_cb": self._error, "closed_cb": self._closed}
        tls = nats_settings.tls
        if tls.enable:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.cacertfile or None)
            if tls.certfile:
                context.load_cert_chain(tls.certfile, tls.keyfile or None)
            options["tls"] = context
            if tls.server_name:
                options["tls_hostname"] = tls.server_name
        if nats_settings.credentials:
            options["user_credentials"] = nats_settings.credentials
        # The first connection gets a bounded number of tries: a node that cannot join says so and exits.
        try:
            self.nc = await asyncio.wait_for(nats.connect(**options), STARTUP_TRIES * nats_settings.connect_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BackplaneUnavailable(f"cannot reach NATS at {', '.join(nats_settings.servers)}: "
                                       f"{self.last_error or exc!r}") from None
        self._set_connected(True)
        self.js = self.nc.jetstream(timeout=self.settings.publish_timeout)
        # JetStream may still be forming (a NATS cluster starting with us): retry its setup for a while.
        deadline = asyncio.get_running_loop().time() + STORAGE_SETUP_TRIES * nats_settings.connect_timeout
        while True:
            try:
                await self._ensure_storage()
                return
            except (TimeoutError, nats.errors.Error) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    await self.nc.close()
                    raise BackplaneUnavailable(f"JetStream storage unavailable: {exc!r}") from None
                log.warning("cluster: JetStream not ready yet (%r); retrying", exc)
                await asyncio.sleep(1.0)

    async def _ensure_storage(self) -> None:
        settings = self.settings
        replicas = max(1, settings.replicas)
        stream = StreamConfig(name=STREAM, subjects=[DURABLE_SUBJECTS], max_age=settings.stream_max_age,
                              storage=StorageType.FILE, num_replicas=replicas)
        try:
            await self.js.add_stream(stream)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(stream)  # an existing stream with other limits: ours win
        for bucket, ttl in ((INTEREST_BUCKET, settings.interest_ttl), (RETAINED_BUCKET, None),
                            (SESSIONS_BUCKET, None), (CHECKPOINTS_BUCKET, None)):
            try:
                self.kv[bucket] = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self.kv[bucket] = await self.js.create_key_value(KeyValueConfig(
                    bucket=bucket, history=1, ttl=ttl, replicas=replicas, storage=StorageType.FILE))

    async def stop(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                if not self.connected:
                    raise BackplaneUnavailable("nothing to drain")
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()
        self._set_connected(False)

    def require(self) -> None:
        if not self.connected:
            raise BackplaneUnavailable(f"cluster backplane (NATS) unavailable: {self.last_error or 'disconnected'}")

    def status(self) -> dict:
        nc = self.nc
        return {"connected": self.connected, "server": (nc.connected_url.netloc if nc is not None and
                                                        nc.connected_url else None),
                "last_error": self.last_error}

    # ----------------------------------------------------------------------------------------- callbacks

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._metrics.backplane_up.set(1 if connected else 0)

    async def _disconnected(self) -> None:
        if self.connected:
            log.warning("cluster: disconnected from NATS")
            for callback in self.on_disconnect:
                callback()
        self._set_connected(False)
        self.last_error = self.last_error or "disconnected"

    async def _reconnected(self) -> None:
        log.info("cluster: reconnected to NATS at %s", self.nc.connected_url.netloc if self.nc else "?")
        self._set_connected(True)
        self.last_error = ""
        self._metrics.reconnects.inc()
        for callback in self.on_reconnect:
            result = callback()
            if asyncio.iscoroutine(result):
                spawn(result)

    async def _error(self, error: Exception) -> None:
        self.last_error = str(error) or type(error).__name__
        log.warning("cluster: NATS error: %s", self.last_error)

    async def _closed(self) -> None:
        self._set_connected(False)
