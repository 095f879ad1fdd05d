"""Retained messages shared by the whole cluster: the JetStream key-value bucket ``wharf_retained`` (one key per
topic) is the store, and every node keeps a full local mirror of it, updated by a watcher, so a new
subscription reads retained messages locally.

A retained publish updates the local mirror at once and writes the bucket; for QoS 1/2 the publisher is
acknowledged only after the bucket write is acknowledged. Other nodes see it as soon as their watcher does.
"""

from __future__ import annotations

import asyncio
import logging

from ..retain import RetainedStore
from ..router import Message
from .backplane import RETAINED_BUCKET, Backplane
from .subjects import decode_message, encode_message, from_kv_key, kv_key

log = logging.getLogger("wharf_broker.cluster")


class ClusterRetainedStore(RetainedStore):
    __slots__ = ("_task", "_watcher", "backplane", "loop", "on_change", "origin")

    def __init__(self, backplane: Backplane, origin: str, loop: asyncio.AbstractEventLoop, on_change) -> None:
        super().__init__()
        self.backplane = backplane
        self.origin = origin
        self.loop = loop
        self.on_change = on_change
        self._watcher = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._watcher = await self.backplane.kv[RETAINED_BUCKET].watchall()
        loaded = asyncio.Event()
        self._task = self.loop.create_task(self._watch(loaded))
        await loaded.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.debug("cluster: watcher not stopped cleanly: %r", exc)

    async def _watch(self, loaded: asyncio.Event) -> None:
        async for entry in self._watcher:
            if entry is None:
                loaded.set()
                continue
            try:
                topic = from_kv_key(entry.key)
            except ValueError:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._remove(topic)
            else:
                try:
                    message, _origin, _seq = decode_message(entry.value, self.loop.time())
                except ValueError as exc:
                    log.warning("cluster: unreadable retained message for %r: %s", topic, exc)
                    continue
                self.store(message)
            self.on_change(self.counted)
            loaded.set()

    def store_cluster(self, message: Message) -> asyncio.Task:
        """Store locally now and in the bucket; the task ends when the bucket has it (or raises)."""
        self.store(message)
        kv = self.backplane.kv[RETAINED_BUCKET]
        key = kv_key(message.topic)
        if message.payload:
            write = kv.put(key, encode_message(message, self.origin, 0, self.loop.time()))
        else:
            write = kv.delete(key)
        return self.loop.create_task(write)
