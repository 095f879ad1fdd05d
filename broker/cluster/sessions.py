"""The cluster's session registry and session take-over between nodes.

The JetStream key-value bucket ``wharf_sessions`` holds one entry per persistent session: the node that has it,
the identity it belongs to (``owner``, see ``tenancy.py``: every node applies ``mqtt.session_owner_check`` to
it as to its own sessions; an entry written without one, by an older node, is taken by the first identity to
connect), its subscriptions, whether its client is connected and, when not, when it expires. Every node mirrors the
bucket. A client connecting to node B with a session that node A holds:

1. B restores the session's subscriptions from the entry right away (so CONNACK says "session present" and
   new messages are routed to B from then on), and notes from then on the (origin, sequence) of every message
   it delivers (``NatsRouter.track``);
2. B asks A (NATS request on ``wharf.node.<A>.takeover``) to hand the session over. A disconnects the old
   connection (5.0: "session taken over"), cancels the client's pending will, like a reconnection does on a
   single node, and lets what NATS already handed it for the session reach the session: nats-py runs each
   subscription's callback in its own task with its own pending queue, so messages read from the socket before
   the request may still wait there (``NatsRouter.drain``, bounded). A then replies with the session's
   unacknowledged and queued messages, each with its (origin, sequence), and the highest sequence number it has
   read from NATS per origin (``high``), and forgets the session without firing anything. B delivers the
   messages, except those that already reached it directly;
3. B records itself as the session's node;
4. B replays the stream from ``CHECKPOINT_MARGIN`` before the restore up to now, skipping what it delivered
   (step 1 and 2) and what A had read (``high``): what was on its way to A when A let the session go (published
   before B's NATS subscription was known where it was published, or on a slower route between NATS servers
   than the request) and that A dropped.

Guarantee: a QoS 1/2 message acknowledged to its publisher (the stream has it) that matches the session's
subscriptions reaches the session exactly once across a take-over, if A had it when it handed over or it was
published at most ``CHECKPOINT_MARGIN`` before the take-over began. Duplicates (QoS 2 included) remain possible
when A could not be sure it had read everything (drain timed out, or nats-py does not count pending messages:
no ``high``, B replays the window skipping only what it has), when the session moves on while a take-over of it
still runs (the next node replays from where that one began: ``replay_from``), or when a message reaches B
directly only after the replay delivered it. Replayed messages may come after newer ones.

A clean start asks A to discard the session instead (its pending will fires then, once, on A).

When A does not answer (it is gone), B keeps the restored subscriptions and replays from the JetStream stream
what A may not have delivered: every node writes a checkpoint to ``wharf_checkpoints`` every second -- a time
before which all QoS 1/2 messages for its persistent sessions were acknowledged by their clients (it only
advances while nothing is in flight or queued for them). Every QoS 1/2 message for a persistent session is in
the stream (see ``nats_router.py``), so B replays the stream's messages from A's last checkpoint up to the
moment B restored the subscriptions, matched against the session's subscriptions: at least once, with
duplicates of what A had delivered after its checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import os
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ..mqtt import reason_codes as rc
from ..router import LocalRouter, Subscription
from ..tasks import spawn
from .backplane import CHECKPOINTS_BUCKET, SESSIONS_BUCKET, STREAM
from .subjects import (
    DURABLE_SUBJECTS,
    decode_message,
    encode_message,
    from_kv_key,
    kv_key,
)

log = logging.getLogger("wharf_broker.cluster")

# A take-over reply is sent in chunks of at most this many bytes (NATS' default payload limit is 1 MiB).
CHUNK_BYTES = 512 * 1024
CHECKPOINT_INTERVAL = 1.0
# Messages published this long before a checkpoint may still be on their way to this node.
CHECKPOINT_MARGIN = 5.0
REPLAY_BATCH = 512


def takeover_subject(node_name: str) -> str:
    return f"wharf.node.{kv_key(node_name)}.takeover"


class SessionRegistry:
    def __init__(self, broker) -> None:
        self.broker = broker
        self.backplane = broker.backplane
        self.node_name = broker.node_name
        self.loop = broker.loop
        self.entries: dict[str, dict] = {}
        self.boot = os.urandom(6).hex()  # tells this run's registry entries from a previous run's
        self.previous_safe_since: float | None = None
        self.version = 0  # bumped on every change of ``entries``
        self._dirty: set[str] = set()
        self._flush_task: asyncio.Task | None = None
        self._watcher = None
        self._tasks: set[asyncio.Task] = set()
        self._sub = None
        self._replaying: dict[str, float] = {}  # client id -> start of the replay its take-over here runs

    async def start(self) -> None:
        self._watcher = await self.backplane.kv[SESSIONS_BUCKET].watchall()
        loaded = asyncio.Event()
        self._spawn(self._watch(loaded))
        await loaded.wait()
        # A node restarted under the same name (a StatefulSet Pod) lost its sessions; its previous run's last
        # checkpoint says from when to replay them.
        try:
            entry = await self.backplane.kv[CHECKPOINTS_BUCKET].get(kv_key(self.node_name))
            self.previous_safe_since = float(json.loads(entry.value)["safe_since"])
        except Exception:  # noqa: BLE001 - a first start: nothing to recover
            self.previous_safe_since = None
        self._sub = await self.backplane.nc.subscribe(takeover_subject(self.node_name), cb=self._on_takeover)
        self._safe_since = time.time()
        self._spawn(self._checkpoints())

    async def stop(self) -> None:
        if self._flush_task is not None and not self._flush_task.done() and self.backplane.connected:
            try:
                await asyncio.wait_for(asyncio.shield(self._flush_task), 2)
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.debug("cluster: watcher not stopped cleanly: %r", exc)
        for task in list(self._tasks):
            task.cancel()
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.debug("cluster: watcher not stopped cleanly: %r", exc)

    def _spawn(self, coroutine) -> asyncio.Task:
        return spawn(coroutine, self._tasks)

    async def _watch(self, loaded: asyncio.Event) -> None:
        async for entry in self._watcher:
            if entry is None:
                loaded.set()
                continue
            try:
                client_id = from_kv_key(entry.key)
            except ValueError:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.entries.pop(client_id, None)
            else:
                try:
                    self.entries[client_id] = json.loads(entry.value)
                except ValueError:
                    continue
            self.version += 1
            loaded.set()

    # ------------------------------------------------------------------------------------- recording

    def owner(self, client_id: str) -> dict | None:
        """The registry entry of a live session another node -- or a previous run of this one -- holds."""
        entry = self.entries.get(client_id)
        if entry is None:
            return None
        if entry.get("node") == self.node_name and (entry.get("boot") == self.boot
                                                    or client_id in self.broker.sessions):
            return None
        expires = entry.get("expires")
        if expires is not None and expires <= time.time():
            return None
        return entry

    def record(self, client_id: str) -> None:
        """Write (soon) this node's view of ``client_id``'s session: present, or gone."""
        self._dirty.add(client_id)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self._spawn(self._flush())

    async def _flush(self) -> None:
        kv = self.backplane.kv[SESSIONS_BUCKET]
        while self._dirty:
            await asyncio.sleep(0)
            batch, self._dirty = self._dirty, set()
            for client_id in batch:
                session = self.broker.sessions.get(client_id)
                try:
                    if session is None:
                        entry = self.entries.get(client_id)
                        if entry is not None and entry.get("node") == self.node_name:
                            self.entries.pop(client_id, None)
                            await kv.delete(kv_key(client_id))
                    else:
                        value = self._entry(session)
                        self.entries[client_id] = value
                        await kv.put(kv_key(client_id), json.dumps(value).encode())
                except Exception as exc:  # noqa: BLE001 - rewritten on the next change
                    log.warning("cluster: session registry update for %r failed: %s", client_id, exc)

    def _entry(self, session) -> dict:
        subscriptions = [[full, sub.topic_filter, sub.qos, sub.no_local, sub.retain_as_published,
                          sub.retain_handling, sub.sub_ids[0] if sub.sub_ids else None, sub.share_group]
                         for full, sub in session.subscriptions.items()]
        connected = session.channel is not None
        return {"node": self.node_name, "boot": self.boot, "subs": subscriptions, "expiry": session.expiry_interval,
                "owner": list(session.owner) if session.owner else None, "connected": connected,
                "expires": None if connected else time.time() + session.expiry_interval}

    # ------------------------------------------------------------------------------------- checkpoints

    def _drained(self) -> bool:
        """No QoS 1/2 message in flight or queued for any persistent session of this node."""
        for session in self.broker.sessions.values():
            if session.expiry_interval <= 0:
                continue
            if session.inflight.entries:
                return False
            for item in session.mqueue._items or ():
                if item.qos:
                    return False
        return True

    async def _checkpoints(self) -> None:
        kv = self.backplane.kv[CHECKPOINTS_BUCKET]
        key = kv_key(self.node_name)
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self._drained():
                self._safe_since = time.time() - CHECKPOINT_MARGIN
            if self.backplane.connected:
                try:
                    await kv.put(key, json.dumps({"safe_since": self._safe_since}).encode())
                except Exception as exc:  # noqa: BLE001 - written again next time
                    log.debug("cluster: checkpoint not written: %r", exc)

    async def _replay_for(self, client_id: str, node: str, until: float, since: float | None = None,
                          skip: set | None = None, high: dict | None = None) -> int:
        """Deliver to ``client_id``'s session the stream's QoS 1/2 messages matching its subscriptions, from
        ``since`` (default: ``node``'s last checkpoint) to ``until`` (when this node restored the
        subscriptions), except those whose (origin, sequence) is in ``skip`` (the session has them: each
        replayed one is added) or at most ``high[origin]`` (``node`` had read them from NATS when it handed the
        session over)."""
        session = self.broker.sessions.get(client_id)
        if session is None:
            return 0
        if since is None:
            try:
                entry = await self.backplane.kv[CHECKPOINTS_BUCKET].get(kv_key(node))
                since = float(json.loads(entry.value)["safe_since"])
            except Exception:  # noqa: BLE001 - no checkpoint: the whole stream
                since = 0.0
        since = max(since, until - self.broker.config.cluster.stream_max_age)
        self._replaying[client_id] = min(since, self._replaying.get(client_id, since))
        return await self._replay_into(session, client_id, until, since, skip, high)

    async def _replay_into(self, session, client_id: str, until: float, since: float, skip: set | None,
                           high: dict | None) -> int:
        router = LocalRouter()  # this session's plain subscriptions only
        for sub in session.subscriptions.values():
            if sub.share_group is None and sub.qos:
                router.subscribe(session, sub)
        js = self.backplane.js
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, ack_policy=AckPolicy.NONE,
                                opt_start_time=datetime.datetime.fromtimestamp(since, datetime.UTC),
                                inactive_threshold=60.0)
        info = await js.stream_info(STREAM)
        last = info.state.last_seq
        delivered = 0
        sub = await js.pull_subscribe(DURABLE_SUBJECTS, stream=STREAM, config=config)
        try:
            done = last == 0
            while not done:
                try:
                    batch = await sub.fetch(REPLAY_BATCH, timeout=2)
                except nats.errors.TimeoutError:
                    break
                for msg in batch:
                    metadata = msg.metadata
                    if metadata.sequence.stream >= last:
                        done = True
                    if metadata.timestamp.timestamp() > until:
                        done = True
                        break
                    try:
                        message, origin, seq = decode_message(msg.data, self.loop.time())
                    except ValueError:
                        continue
                    stamp = (origin, seq)
                    if skip is not None:
                        if stamp in skip or (high and seq <= high.get(origin, 0)):
                            continue
                        skip.add(stamp)
                    message.stamp = stamp
                    await self._room_in_queue(session)
                    if self.broker.sessions.get(client_id) is not session:
                        return delivered  # taken over meanwhile: the next node replays what it needs
                    delivered += router.publish(message)
        finally:
            await sub.unsubscribe()
        return delivered

    async def _room_in_queue(self, session) -> None:
        """Replay no faster than a connected client takes messages: a replay must not overflow the session's
        queue (whose limit and drop policy still apply to an offline client)."""
        limit = session.mqueue.max_len
        if limit is None:
            return
        while session.channel is not None and len(session.mqueue) >= max(1, limit // 2):
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------------------------- take-over

    def restore(self, session, entry: dict) -> None:
        """Give ``session`` the subscriptions of the registry entry."""
        for full, topic_filter, qos, no_local, rap, rh, sub_id, group in entry.get("subs", ()):
            if full in session.subscriptions:
                continue
            self.broker.subscribe(session, full, Subscription(topic_filter, qos, no_local, rap, rh, sub_id, group))

    def take_over(self, client_id: str, entry: dict, discard: bool) -> None:
        # Called right after ``restore``: from now on, what reaches the session here directly is noted.
        tracker = self.broker.router.track()
        # Until it is over, a take-over of the session by yet another node must replay from here on.
        self._replaying[client_id] = time.time() - CHECKPOINT_MARGIN
        self._spawn(self._take_over(client_id, entry["node"], discard, tracker))

    async def _take_over(self, client_id: str, node: str, discard: bool, tracker: set) -> None:
        try:
            if await self._take_over_from(client_id, node, discard, tracker):
                return
        finally:
            self.broker.router.untrack(tracker)
            self._replaying.pop(client_id, None)
        self.record(client_id)

    async def _take_over_from(self, client_id: str, node: str, discard: bool, tracker: set) -> bool:
        """True when it recorded the session as this node's already."""
        restored_at = time.time()
        if node == self.node_name:  # a previous run of this node held it
            if not discard:
                await self._replay_logged(client_id, node, restored_at, self.previous_safe_since or 0.0, tracker)
            return False
        nc = self.backplane.nc
        inbox = nc.new_inbox()
        chunks: asyncio.Queue = asyncio.Queue()
        sub = await nc.subscribe(inbox, cb=chunks.put)
        delivered = 0
        try:
            await nc.publish(takeover_subject(node), json.dumps({"client": client_id, "discard": discard,
                                                                 "by": self.node_name}).encode(), reply=inbox)
            timeout = self.broker.config.cluster.takeover_timeout
            while True:
                msg = await asyncio.wait_for(chunks.get(), timeout)
                if not msg.data:  # NATS' "no responders" status: nobody serves that node's subject
                    raise LookupError("no responders")
                reply = json.loads(msg.data)
                delivered += self._deliver_handed_over(client_id, reply.get("messages", ()), tracker)
                if reply.get("end"):
                    break
            log.info("client %r: session taken over from node %s (%d messages handed over)", client_id, node,
                     delivered)
        except (TimeoutError, ValueError, LookupError) as exc:
            log.warning("client %r: node %s did not hand the session over (%s); subscriptions restored, "
                        "replaying its messages from the stream", client_id, node, exc or type(exc).__name__)
            if not discard:
                await self._replay_logged(client_id, node, restored_at, None, tracker)
            return False
        finally:
            await sub.unsubscribe()
        if discard:
            return False
        if "lost_since" in reply:  # that node restarted since: it lost the session
            await self._replay_logged(client_id, node, restored_at, float(reply["lost_since"]), tracker)
            return False
        self.record(client_id)  # now (the replay below may take a while): the session is here
        # What was on its way to that node when it handed the session over -- delivered to it after, or read
        # by it too late -- and did not reach this node directly: from the stream, up to now.
        high = reply.get("high")
        since = min(restored_at - CHECKPOINT_MARGIN, float(reply.get("replay_from", restored_at)))
        if high is None:
            log.warning("client %r: node %s could not say what it had read: replaying from %.1f s ago, "
                        "messages may come twice", client_id, node, time.time() - since)
        await self._replay_logged(client_id, node, time.time(), since, tracker, high or {})
        return True  # not again: the session may have moved on meanwhile

    async def _replay_logged(self, client_id: str, node: str, until: float, since: float | None,
                             skip: set | None = None, high: dict | None = None) -> None:
        try:
            replayed = await self._replay_for(client_id, node, until, since, skip, high)
            log.info("client %r: %d messages replayed from the stream", client_id, replayed)
        except Exception as exc:  # noqa: BLE001 - nothing more to be done than saying so
            log.error("client %r: replay from the stream failed, messages node %s held may be lost: %r",
                      client_id, node, exc)

    def _deliver_handed_over(self, client_id: str, messages, tracker: set) -> int:
        session = self.broker.sessions.get(client_id)
        if session is None:
            return 0
        now = self.loop.time()
        count = 0
        for item in messages:
            try:
                message, origin, seq = decode_message(base64.b64decode(item["m"]), now)
            except (ValueError, KeyError) as exc:
                log.warning("client %r: unreadable handed-over message: %s", client_id, exc)
                continue
            if origin:  # from a node of the cluster: the session may have it already
                message.stamp = stamp = (origin, seq)
                if stamp in tracker:
                    continue  # it reached this node directly too, after the subscriptions were restored
                tracker.add(stamp)
            if session.read_check is not None and not session.read_check(message.topic):
                continue  # queued for the identity this session belonged to before (session_owner_check = off)
            session.deliver(message, int(item["q"]), bool(item["r"]), tuple(item["i"]))
            count += 1
        return count

    async def _drain_for(self, client_id: str, session) -> tuple[bool, object]:
        """Let the messages NATS delivered to this node for ``session`` before the take-over request reach the
        session's queue, so that they are handed over with it (see ``NatsRouter.drain``). Returns the session
        as it is afterwards (None if it went meanwhile), and whether the drain was complete."""
        router = self.broker.router
        timeout = max(0.5, self.broker.config.cluster.takeover_timeout / 2)
        drained = await router.drain(router.subscription_keys(session), timeout)
        if not drained:
            log.warning("client %r: messages NATS brought for the session may not all be in it when handed "
                        "over; the taking node replays the last seconds from the stream", client_id)
        return drained, self.broker.sessions.get(client_id)

    async def _on_takeover(self, msg) -> None:
        try:
            request = json.loads(msg.data)
            client_id = str(request["client"])
            discard = bool(request.get("discard"))
        except (ValueError, KeyError, TypeError):
            return
        broker = self.broker
        channel = broker.channels.get(client_id)
        if channel is not None:
            log.info("client %r: session taken over by node %s", client_id, request.get("by"))
            channel.kick(rc.SESSION_TAKEN_OVER, "session taken over")
        broker.wills.cancel(client_id)  # the client is back (elsewhere): as a reconnection on one node does
        session = broker.sessions.get(client_id)
        drained = False
        final_since = None
        if session is not None and not discard:
            drained, session = await self._drain_for(client_id, session)
            channel = broker.channels.get(client_id)
            if channel is not None:  # the client came back here meanwhile: the request came first
                channel.kick(rc.SESSION_TAKEN_OVER, "session taken over")
            if client_id in self._replaying:
                # Still replaying into it after taking it over itself: the marks do not cover that, the taking
                # node replays from where this replay started.
                drained = False
                final_since = self._replaying[client_id]
        final: dict = {"end": True}
        if final_since is not None:
            final["replay_from"] = final_since
        pending: list = []
        if session is not None:
            if not discard:
                # From the drain on, nothing waits: what the session has, and the high-water marks, are taken
                # together, and the session goes before anything else can reach it.
                if drained:
                    final["high"] = self.broker.router.high_water()
                pending = [(e.message, e.qos, e.retain, e.sub_ids) for e in session.inflight.entries.values()
                           if e.message is not None]
                items = session.mqueue._items or ()
                pending += [(q.message, q.qos, q.retain, q.sub_ids) for q in items]
                broker.hand_over_session(session)
            else:
                broker.discard_session(session)
        else:  # the registry names this node, but a previous run of it had the session
            final["lost_since"] = self.previous_safe_since or 0.0
        now = broker.loop.time()
        chunk: list = []
        size = 0
        for message, qos, retain, sub_ids in pending:
            origin, seq = message.stamp or ("", 0)
            encoded = base64.b64encode(encode_message(message, origin, seq, now)).decode()
            if size + len(encoded) > CHUNK_BYTES and chunk:
                await msg.respond(json.dumps({"messages": chunk}).encode())
                chunk, size = [], 0
            chunk.append({"m": encoded, "q": qos, "r": retain, "i": list(sub_ids)})
            size += len(encoded)
        final["messages"] = chunk
        await msg.respond(json.dumps(final).encode())
