"""``NatsRouter``: the ``Router`` of a cluster node. Local sessions are matched by a ``LocalRouter`` as in a
standalone broker; what some other node subscribes to also goes to NATS, and what NATS brings in from other
nodes is matched against the local sessions.

- Interest: this node's plain filters and shared groups are published in the ``wharf_interest`` bucket (see
  ``interest.py``); a message goes to NATS only when another node's filter, or any node's shared group,
  matches its topic.
- Subscriptions: for each local filter the node holds NATS subscriptions on the filter's subjects (see
  ``subjects.py``), reference-counted, so NATS routes to this node only what it asked for.
- Ordering: every message carries (origin, sequence). Overlapping filters (``a/+`` and ``a/#``) are two NATS
  subscriptions, each delivering in the publisher's order but independently of each other: the first copy of a
  message is delivered and later copies are dropped, which keeps the publisher's order.
- QoS 1/2 to other nodes is a JetStream publish; ``publish`` then returns a future that resolves when the
  stream acknowledged it, and the channel acknowledges the publisher only then. Cut off from NATS, such a
  publish fails with ``BackplaneUnavailable`` instead of pretending.
- Gaps: plain NATS subscriptions miss what is published while this node's NATS connection is down (its NATS
  server died, a partition). After a reconnection the node replays the stream's QoS 1/2 messages from shortly
  before the disconnection (``REPLAY_MARGIN``); the (origin, sequence) check drops those it already delivered,
  so subscribers here get the missed ones -- possibly after newer ones.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import os
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ..mqtt.topic import matches
from ..router import LocalRouter, Message, Router, Subscription
from ..tasks import spawn
from .backplane import INTEREST_BUCKET, STREAM, Backplane, BackplaneUnavailable
from .interest import InterestView, encode_interest
from .shared import LocalSharedGroups, queue_name
from .subjects import (
    DURABLE_SUBJECTS,
    decode_message,
    encode_message,
    filter_subjects,
    kv_key,
    topic_subject,
)

log = logging.getLogger("wharf_broker.cluster")

# A broken connection may go unnoticed for up to two pings: replay from this long before it was noticed.
REPLAY_MARGIN = 15.0
REPLAY_BATCH = 512
REPLAY_ATTEMPTS = 30


class NatsRouter(Router):
    def __init__(self, backplane: Backplane, node_name: str, metrics, loop: asyncio.AbstractEventLoop) -> None:
        self.local = LocalRouter()
        self.shared = LocalSharedGroups()
        self.backplane = backplane
        self.node_name = node_name
        # Sequence numbers restart with the process: the origin includes a per-start nonce.
        self.origin = f"{node_name}#{os.urandom(4).hex()}"
        self.interest = InterestView(node_name)
        self.metrics = metrics
        self.loop = loop
        self._seq = 0
        self._seen: dict[str, RecentSet] = {}  # origin -> sequence numbers recently delivered
        self._filter_refs: dict[str, int] = {}  # plain filter -> local subscriptions
        self._subject_refs: dict[str, int] = {}  # NATS subject -> local filters needing it
        self._nats_subs: dict = {}  # subject or (queue, subject) -> nats Subscription (or pending task)
        self._high: dict[str, int] = {}  # origin -> highest sequence number received
        self._trackers: list[set] = []  # see ``track``
        self._interest_dirty = False
        self._interest_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._watcher = None
        self._gap_since: float | None = None  # wall-clock time the NATS connection was lost
        self.sessions = None  # the SessionRegistry, once started
        self._orphans: set[str] = set()
        self._orphans_key = None
        self._orphan_topics: dict[str, bool] = {}

    # ------------------------------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        kv = self.backplane.kv[INTEREST_BUCKET]
        self._watcher = await kv.watchall()
        first_done = asyncio.Event()
        self._spawn(self._watch_interest(first_done))
        await first_done.wait()
        await self._publish_interest()
        self._spawn(self._heartbeat())
        self.backplane.on_reconnect.append(self._mark_interest)
        self.backplane.on_reconnect.append(self._replay_gap)
        self.backplane.on_disconnect.append(self._note_gap)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if not self.backplane.connected:
            return
        try:
            await asyncio.wait_for(self.backplane.kv[INTEREST_BUCKET].delete(kv_key(self.node_name)), 2)
        except Exception as exc:  # noqa: BLE001 - the entry expires by itself anyway
            log.info("cluster: interest entry not removed: %s", exc)
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.debug("cluster: watcher not stopped cleanly: %r", exc)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = spawn(coroutine, self._tasks)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("cluster: background task failed: %r", task.exception())

    async def _watch_interest(self, first_done: asyncio.Event) -> None:
        async for entry in self._watcher:
            if entry is None:  # the initial values are all in
                first_done.set()
                continue
            deleted = entry.operation in ("DEL", "PURGE") or entry.value is None
            self.interest.apply(entry.key, None if deleted else entry.value)
            self.metrics.members.set(len(self.interest.nodes))
            first_done.set()

    async def _heartbeat(self) -> None:
        interval = max(0.5, self.backplane.settings.interest_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            if self.backplane.connected:
                try:
                    await self._publish_interest()
                except Exception as exc:  # noqa: BLE001 - retried next beat
                    log.warning("cluster: interest refresh failed: %s", exc)

    def _mark_interest(self) -> None:
        self._interest_dirty = True
        if self._interest_task is None or self._interest_task.done():
            self._interest_task = self._spawn(self._flush_interest())

    async def _flush_interest(self) -> None:
        while self._interest_dirty:
            self._interest_dirty = False
            await asyncio.sleep(0)  # coalesce a burst of (un)subscribes into one write
            try:
                # Our NATS subscriptions reach the server before others learn they may send to us.
                await self.backplane.nc.flush(timeout=self.backplane.settings.publish_timeout)
                await self._publish_interest()
            except Exception as exc:  # noqa: BLE001 - written again by the heartbeat
                log.warning("cluster: interest update failed: %s", exc)

    async def _publish_interest(self) -> None:
        value = encode_interest(self._filter_refs, self.shared.groups)
        await self.backplane.kv[INTEREST_BUCKET].put(kv_key(self.node_name), value)

    # ------------------------------------------------------------------------------------ Router: subscribe

    def subscribe(self, session, subscription: Subscription) -> None:
        if subscription.share_group is not None:
            if self.shared.add(session, subscription):
                queue = queue_name(subscription.share_group, subscription.topic_filter)
                key = (subscription.share_group, subscription.topic_filter)
                for subject in filter_subjects(subscription.topic_filter):
                    self._nats_subscribe((queue, subject), subject, queue, key)
                self._mark_interest()
            return
        self.local.subscribe(session, subscription)
        topic_filter = subscription.topic_filter
        count = self._filter_refs.get(topic_filter, 0)
        self._filter_refs[topic_filter] = count + 1
        if count == 0:
            for subject in filter_subjects(topic_filter):
                refs = self._subject_refs.get(subject, 0)
                self._subject_refs[subject] = refs + 1
                if refs == 0:
                    self._nats_subscribe(subject, subject, None, None)
            self._mark_interest()

    def unsubscribe(self, session, subscription: Subscription) -> None:
        if subscription.share_group is not None:
            if self.shared.remove(session, subscription):
                queue = queue_name(subscription.share_group, subscription.topic_filter)
                for subject in filter_subjects(subscription.topic_filter):
                    self._nats_unsubscribe((queue, subject))
                self._mark_interest()
            return
        node = self.local.trie.node(subscription.topic_filter)
        if node is None or session not in node.subscribers:
            return
        self.local.unsubscribe(session, subscription)
        topic_filter = subscription.topic_filter
        count = self._filter_refs.get(topic_filter, 0) - 1
        if count > 0:
            self._filter_refs[topic_filter] = count
            return
        self._filter_refs.pop(topic_filter, None)
        for subject in filter_subjects(topic_filter):
            refs = self._subject_refs.get(subject, 0) - 1
            if refs > 0:
                self._subject_refs[subject] = refs
            else:
                self._subject_refs.pop(subject, None)
                self._nats_unsubscribe(subject)
        self._mark_interest()

    def _nats_subscribe(self, key, subject: str, queue: str | None, shared_key) -> None:
        # The callbacks never wait: a message taken from a subscription's pending queue is delivered at once
        # (``drain`` relies on it).
        if shared_key is None:
            async def handler(msg):
                self._deliver_remote(msg.data)
        else:
            async def handler(msg, _key=shared_key):
                self._on_shared(_key, msg)

        async def subscribe():
            sub = await self.backplane.nc.subscribe(subject, queue=queue or "", cb=handler,
                                                    pending_msgs_limit=1_000_000,
                                                    pending_bytes_limit=512 * 1024 * 1024)
            if self._nats_subs.get(key) is task:
                self._nats_subs[key] = sub
            else:  # unsubscribed meanwhile
                await sub.unsubscribe()

        task = self._spawn(subscribe())
        self._nats_subs[key] = task
        self._interest_dirty = True

    def _nats_unsubscribe(self, key) -> None:
        sub = self._nats_subs.pop(key, None)
        if sub is None or isinstance(sub, asyncio.Task):
            return  # a pending subscribe sees it is no longer wanted
        self._spawn(sub.unsubscribe())

    def subscription_keys(self, session) -> list:
        """The keys in ``_nats_subs`` of the NATS subscriptions that bring messages to ``session``."""
        keys = []
        for sub in session.subscriptions.values():
            for subject in filter_subjects(sub.topic_filter):
                if sub.share_group is None:
                    keys.append(subject)
                else:
                    keys.append((queue_name(sub.share_group, sub.topic_filter), subject))
        return keys

    async def drain(self, keys, timeout: float) -> bool:
        """Wait until no message NATS handed to the subscriptions ``keys`` waits undelivered in their queues.
        nats-py runs each subscription's callback in its own task with its own pending queue, so a message read
        from the socket before, say, a take-over request may still wait in its subscription's queue while the
        request's callback runs. True when, at the moment this returns, every message read so far for ``keys``
        has been delivered to the local sessions (nothing in between: the caller may rely on it until it
        awaits); False when that could not be had within ``timeout``, or this nats-py does not say how many
        messages a subscription holds."""
        if not PENDING_COUNT_KNOWN:
            return False
        deadline = self.loop.time() + timeout
        while True:
            subs = [self._nats_subs.get(key) for key in keys]
            if not any(sub.pending_msgs for sub in subs if sub is not None and not isinstance(sub, asyncio.Task)):
                return True
            if self.loop.time() >= deadline:
                return False
            await asyncio.sleep(0.001)

    def high_water(self) -> dict[str, int]:
        """For each origin, the highest sequence number this node has received (its own: published): NATS
        delivers one publisher's messages in order, so every message of that origin up to it that this node
        subscribes to has been read from NATS."""
        marks = dict(self._high)
        marks[self.origin] = self._seq
        return marks

    def track(self) -> set:
        """A set that collects the (origin, sequence) of every message this node delivers from now on, until
        ``untrack``: what a session taking over since then has had."""
        tracker: set = set()
        self._trackers.append(tracker)
        return tracker

    def untrack(self, tracker: set) -> None:
        if tracker in self._trackers:
            self._trackers.remove(tracker)

    # -------------------------------------------------------------------------------------- Router: publish

    def publish(self, message: Message):
        """Deliver to local sessions and, when another node is interested, through NATS. Returns the number
        of local deliveries, plus one for the cluster; or, for QoS 1/2 sent to NATS, a future of that number
        resolved once JetStream acknowledged the message. Raises ``BackplaneUnavailable`` for a QoS 1/2
        message other nodes need while NATS is unreachable (nothing is delivered then)."""
        remote, shared = self.interest.forward(message.topic)
        # A QoS 1/2 message for a persistent session here goes to the stream too, so that it outlives this
        # node (the session's next node replays it, see sessions.py).
        durable = message.qos and (remote or shared or self._persistent_match(message.topic)
                                   or self._orphan_match(message.topic))
        backplane = self.backplane
        if durable:
            backplane.require()
        count = self.local.publish(message)
        if not (remote or shared or durable):
            return count
        if not backplane.connected:  # QoS 0: local delivery only
            self.metrics.unforwarded.inc()
            if shared:
                count += self.shared.deliver_locally(message)
            return count
        self._seq += 1
        message.stamp = stamp = (self.origin, self._seq)
        for tracker in self._trackers:
            tracker.add(stamp)
        payload = encode_message(message, self.origin, self._seq, self.loop.time())
        subject = topic_subject(message.topic, message.qos)
        self.metrics.forwarded.inc()
        if not message.qos:
            self._spawn(backplane.nc.publish(subject, payload))
            return count + 1
        return self._spawn(self._publish_durable(subject, payload, count + 1))

    def _persistent_match(self, topic: str) -> bool:
        for node in self.local.match(topic):
            for session, sub in node.subscribers.items():
                if sub.qos and session.expiry_interval > 0:
                    return True
        return False

    def _orphan_match(self, topic: str) -> bool:
        """Whether a persistent session of another node subscribes to ``topic`` (QoS 1/2) according to the
        session registry: when its node is gone, its next node replays the stream for it; while it is being
        taken over, the interest view may for a moment show neither node subscribed (the old node removed the
        filter, the new node's entry is not here yet) although the new node's NATS subscription is in place.
        Either way the message must go to NATS and the stream."""
        registry = self.sessions
        if registry is None:
            return False
        key = (registry.version, self.interest.version)
        if key != self._orphans_key:
            self._orphans = {sub[1] for entry in registry.entries.values() if entry.get("node") != self.node_name
                             for sub in entry.get("subs", ()) if sub[2] and sub[7] is None}
            self._orphans_key = key
            self._orphan_topics.clear()
        if not self._orphans:
            return False
        found = self._orphan_topics.get(topic)
        if found is None:
            if len(self._orphan_topics) > 50_000:
                self._orphan_topics.clear()
            found = self._orphan_topics[topic] = any(matches(topic, f) for f in self._orphans)
        return found

    async def _publish_durable(self, subject: str, payload: bytes, delivered: int) -> int:
        try:
            await self.backplane.js.publish(subject, payload, timeout=self.backplane.settings.publish_timeout)
        except Exception as exc:
            self.metrics.publish_failures.inc()
            raise BackplaneUnavailable(f"cluster backplane did not accept the message: {exc!r}") from exc
        return delivered

    # ------------------------------------------------------------------------------------------- receiving

    def _note_gap(self) -> None:
        if self._gap_since is None:
            self._gap_since = time.time()

    def _replay_gap(self) -> None:
        since, self._gap_since = self._gap_since, None
        if since is not None and self._filter_refs:
            self._spawn(self._replay(since - REPLAY_MARGIN))

    async def _replay(self, since: float) -> None:
        """Deliver the stream's QoS 1/2 messages from ``since`` that this node has not delivered yet. Retried
        while the stream is unavailable (a new stream leader is being elected after a NATS node died)."""
        for attempt in range(REPLAY_ATTEMPTS):
            try:
                replayed = await self._replay_once(since)
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                log.warning("cluster: replay after reconnection failed (attempt %d): %r", attempt + 1, exc)
                await asyncio.sleep(1.0)
                continue
            log.info("cluster: replay after reconnection: %d missed QoS 1/2 messages delivered", replayed)
            return
        log.error("cluster: QoS 1/2 messages published while this node was disconnected may be missing here")

    async def _replay_once(self, since: float) -> int:
        js = self.backplane.js
        start = datetime.datetime.fromtimestamp(since, datetime.UTC)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start,
                                ack_policy=AckPolicy.NONE, inactive_threshold=60.0)
        info = await js.stream_info(STREAM)
        last = info.state.last_seq
        replayed = 0
        sub = await js.pull_subscribe(DURABLE_SUBJECTS, stream=STREAM, config=config)
        try:
            done = False
            while not done:
                try:
                    batch = await sub.fetch(REPLAY_BATCH, timeout=2)
                except nats.errors.TimeoutError:
                    break
                for msg in batch:
                    if self._deliver_remote(msg.data):
                        replayed += 1
                    if msg.metadata.sequence.stream >= last:
                        done = True
        finally:
            await sub.unsubscribe()
        return replayed

    def _accept(self, data: bytes):
        try:
            return decode_message(data, self.loop.time())
        except ValueError as exc:
            log.warning("cluster: dropped an unreadable message from NATS: %s", exc)
            return None, None, None

    def _deliver_remote(self, data: bytes) -> bool:
        """Deliver a message from another node unless it is ours or already delivered."""
        message, origin, seq = self._accept(data)
        if message is None or origin == self.origin:
            return False
        seen = self._seen.get(origin)
        if seen is None:
            seen = self._seen[origin] = RecentSet()
        if not seen.add(seq):
            return False  # another of our subscriptions (or the replay) already brought this one
        if seq > self._high.get(origin, 0):
            self._high[origin] = seq
        self.metrics.received.inc()
        message.stamp = stamp = (origin, seq)
        for tracker in self._trackers:
            tracker.add(stamp)
        return self.local.publish(message) > 0

    def _on_shared(self, key, msg) -> None:
        message, _origin, _seq = self._accept(msg.data)
        if message is not None:
            self.shared.deliver(key, message)


def _pending_count_known() -> bool:
    """Whether nats-py's ``Subscription`` tells how many delivered messages wait in its queue (``drain``)."""
    try:
        from nats.aio.subscription import Subscription as NatsSubscription
    except ImportError:
        return False
    return isinstance(getattr(NatsSubscription, "pending_msgs", None), property)


PENDING_COUNT_KNOWN = _pending_count_known()
if not PENDING_COUNT_KNOWN:
    log.warning("cluster: this nats-py does not count a subscription's pending messages: at a take-over the "
                "taking node replays the last seconds from the stream, and messages may come twice")


class RecentSet:
    """The last ``limit`` sequence numbers seen from one origin."""

    __slots__ = ("_limit", "_order", "_set")

    def __init__(self, limit: int = 65536) -> None:
        self._set: set[int] = set()
        self._order: collections.deque = collections.deque()
        self._limit = limit

    def add(self, seq: int) -> bool:
        """False when ``seq`` was seen already."""
        if seq in self._set:
            return False
        self._set.add(seq)
        self._order.append(seq)
        if len(self._order) > self._limit:
            self._set.discard(self._order.popleft())
        return True


__all__ = ["BackplaneUnavailable", "NatsRouter"]
