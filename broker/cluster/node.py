"""``ClusterBroker``: the broker of one cluster node. It is the standalone ``Broker`` with the cluster's
router (``NatsRouter``), retained store (``ClusterRetainedStore``) and session registry (``SessionRegistry``)
plugged in, on one NATS connection (``Backplane``).

``publish`` returns an int like the standalone broker when the message is done with at once, or a future for a
QoS 1/2 message the backplane must accept first (sent to another node, or retained): the channel acknowledges
the publisher when it resolves, and answers with an error reason code when it fails.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from ..broker import Broker
from ..config.model import Node
from ..metrics import REGISTRY, Registry
from ..tenancy import GUEST, REFUSE
from .backplane import Backplane, BackplaneUnavailable
from .nats_router import NatsRouter
from .retained import ClusterRetainedStore
from .sessions import SessionRegistry

log = logging.getLogger("wharf_broker.cluster")


def member_name(config) -> str:
    """This node's name in the cluster: ``node.name``, or, left at its default (every replica of a
    StatefulSet shares one config), ``wharf@<host name>`` -- the Pod's name on Kubernetes."""
    if config.node.name != Node().name:
        return config.node.name
    return f"wharf@{socket.gethostname()}"


class ClusterMetrics:
    def __init__(self, registry: Registry) -> None:
        self.backplane_up = registry.gauge("wharf_cluster_backplane_up",
                                           "1 while this node is connected to the NATS backplane")
        self.members = registry.gauge("wharf_cluster_members", "Nodes with a live interest entry, this one included")
        self.reconnects = registry.counter("wharf_cluster_reconnects_total", "Reconnections to NATS")
        self.forwarded = registry.counter("wharf_cluster_messages_forwarded_total",
                                          "Messages sent to NATS for other nodes or shared groups")
        self.received = registry.counter("wharf_cluster_messages_received_total",
                                         "Messages from other nodes delivered to local subscribers")
        self.unforwarded = registry.counter("wharf_cluster_messages_unforwarded_total",
                                            "QoS 0 messages other nodes wanted, not sent: NATS was unreachable")
        self.publish_failures = registry.counter("wharf_cluster_publish_failures_total",
                                                 "QoS 1/2 messages refused: the backplane did not accept them")


class ClusterBroker(Broker):
    def __init__(self, config=None, *, registry: Registry = REGISTRY, **kwargs) -> None:
        super().__init__(config, registry=registry, **kwargs)
        self.cluster_metrics = ClusterMetrics(registry)
        self.node_name = member_name(self.config)
        self.backplane = Backplane(self.config.cluster, self.node_name, self.cluster_metrics)
        self.registry: SessionRegistry | None = None
        self._handing_over: set[str] = set()

    async def start(self) -> None:
        loop = self.loop
        await self.backplane.start()
        router = NatsRouter(self.backplane, self.node_name, self.cluster_metrics, loop)
        await router.start()
        self.router = router
        limits = self.retained
        self.retained = ClusterRetainedStore(self.backplane, router.origin, loop, self.metrics.retained.set)
        # The retainer limits hold per node (the mirror of the cluster's store).
        self.retained.max_messages, self.retained.max_bytes = limits.max_messages, limits.max_bytes
        self.retained.max_payload_size = limits.max_payload_size
        await self.retained.start()
        self.registry = SessionRegistry(self)
        await self.registry.start()
        router.sessions = self.registry
        log.info("cluster: node %s joined through NATS %s (members: %s)", self.node_name,
                 self.backplane.status()["server"], ", ".join(router.interest.members()))

    async def shutdown(self, timeout: float = 5.0) -> None:
        await super().shutdown(timeout)
        if isinstance(self.router, NatsRouter):
            await self.router.stop()
        if isinstance(self.retained, ClusterRetainedStore):
            await self.retained.stop()
        if self.registry is not None:
            await self.registry.stop()
        await self.backplane.stop()

    def cluster_status(self) -> dict:
        router = self.router
        return {"node": self.node_name, "backplane": self.backplane.status(),
                "members": router.interest.members() if isinstance(router, NatsRouter) else []}

    # ------------------------------------------------------------------------------------- messages

    def publish(self, message):
        self._received.value += 1
        stored = None
        try:
            if message.retain and self.config.mqtt.retain_available and self.retain_refusal(message) is None:
                if message.qos:
                    self.backplane.require()
                stored = self.retained.store_cluster(message)
                self.metrics.retained.set(self.retained.counted)
                if not message.qos:
                    stored.add_done_callback(_log_failure)
            delivered = self.router.publish(message)
        except BackplaneUnavailable as exc:
            self.cluster_metrics.publish_failures.inc()
            failed = self.loop.create_future()
            failed.set_exception(exc)
            failed.add_done_callback(_retrieved)
            return failed
        if not message.qos or (stored is None and isinstance(delivered, int)):
            if isinstance(delivered, asyncio.Future):  # pragma: no cover - QoS 0 never waits
                return 1
            if not delivered:
                self.metrics.dropped("no_subscribers").value += 1
            return delivered
        settled = self.loop.create_task(_settle(delivered, stored))
        settled.add_done_callback(_retrieved)  # a will's publish has nobody waiting for it
        return settled

    # ------------------------------------------------------------------------------------- sessions

    def subscribe(self, session, full_filter, subscription) -> None:
        super().subscribe(session, full_filter, subscription)
        self._record(session)

    def unsubscribe(self, session, full_filter) -> bool:
        found = super().unsubscribe(session, full_filter)
        if found:
            self._record(session)
        return found

    def attach(self, channel, client_id: str, clean_start: bool):
        registry = self.registry
        remote = registry.owner(client_id) if registry is not None else None
        inherited = False
        if remote is not None and client_id not in self.sessions:
            # The session is on another node: its registry entry says whose it is (the same check as here).
            current = remote.get("owner")
            verdict = self.owner_verdict(channel, client_id, tuple(current) if current else None)
            if verdict == REFUSE:
                return None, False
            if verdict == GUEST:
                return self.guest_session(channel, client_id), False
            inherited = current is not None and tuple(current) != channel.owner and not clean_start
        session, present = super().attach(channel, client_id, clean_start)
        if session is None or session.guest:
            return session, present
        if inherited:
            self.inherit(session, channel)
        if remote is not None:
            if not clean_start and not present:
                registry.restore(session, remote)
                present = True
            registry.take_over(client_id, remote, discard=clean_start)
        else:
            self._record(session)
        return session, present

    def detach(self, channel, will) -> None:
        super().detach(channel, will)
        session = channel.session
        if session is not None and self.sessions.get(session.client_id) is session:
            self._record(session)

    def discard_session(self, session) -> None:
        super().discard_session(session)
        if session.client_id not in self._handing_over:
            self._record(session)

    def hand_over_session(self, session) -> None:
        """Another node took ``session`` over: forget it here, firing nothing and recording nothing."""
        self._handing_over.add(session.client_id)
        try:
            self.wills.cancel(session.client_id)
            session.mqueue.clear()
            super().discard_session(session)
        finally:
            self._handing_over.discard(session.client_id)

    def _record(self, session) -> None:
        if session.guest:  # not the client id's session: the registry entry stays the owner's
            return
        if self.registry is not None and session.client_id not in self._handing_over:
            self.registry.record(session.client_id)


async def _settle(delivered, stored) -> int:
    """The number of deliveries once the backplane accepted everything the message needed."""
    if stored is not None:
        try:
            await stored
        except Exception as exc:
            if isinstance(delivered, asyncio.Future):
                delivered.cancel()
            raise BackplaneUnavailable(f"retained message not stored in the cluster: {exc!r}") from exc
    if isinstance(delivered, asyncio.Future):
        delivered = await delivered
    return max(1, delivered) if stored is not None else delivered


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster: retained message not stored in the cluster: %r", task.exception())
