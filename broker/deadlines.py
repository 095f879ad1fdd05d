"""Connection deadlines (the CONNECT's idle timeout, then the keep-alive) in one-second buckets, one timer for all.

A timer per connection costs memory (an event-loop timer handle with its context, ~570 bytes under uvloop) and a
heap insertion and removal each time it is set or cancelled. Here a connection is only entered in the set of the
second its deadline falls in; one timer wakes once a second while any deadline is pending, and hands every
connection whose second has come to ``Connection.deadline_reached``, which closes it or names its next deadline
(the keep-alive is measured from the last packet received, so a busy client's deadline simply moves on). The
cost of a tick is that of the connections due in it, not of all connections (mosquitto's keep-alive works alike).

A deadline is met within the second after it: a keep-alive limit of 1.5 x 60 s closes a silent client after
90 to 91 s.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Callable, Protocol

log = logging.getLogger("wharf_broker.connection")

RESOLUTION = 1.0  # seconds per bucket


class Watched(Protocol):
    """What ``Deadlines`` needs of a connection (``connection.Connection``)."""

    deadline_slot: int  # the bucket it waits in; 0: none (kept on the connection: no map beside the buckets)

    @property
    def peer_text(self) -> str: ...

    def deadline_reached(self, now: float) -> float | None: ...


class Deadlines:
    __slots__ = ("_loop", "_buckets", "_done", "_handle", "_ticking")

    def __init__(self, loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._loop = loop
        self._buckets: dict[int, set[Watched]] = {}
        self._done = -1  # the last bucket handled (its number: seconds of the loop's clock / RESOLUTION)
        self._handle: asyncio.TimerHandle | None = None
        self._ticking = False

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def watch(self, connection: Watched, deadline: float) -> None:
        """Hand ``connection`` to ``deadline_reached`` once the loop's clock passed ``deadline`` (any earlier
        deadline of it is forgotten)."""
        if connection.deadline_slot:
            self.forget(connection)
        if self._done < 0:
            self._done = math.floor(self._loop().time() / RESOLUTION)
        # Never a bucket already handled; bucket numbers start at 1 (0 means "none" in ``deadline_slot``).
        slot = max(math.ceil(deadline / RESOLUTION), self._done + 1, 1)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
        bucket.add(connection)
        connection.deadline_slot = slot
        if self._handle is None and not self._ticking:
            self._handle = self._loop().call_at((self._done + 1) * RESOLUTION, self._tick)

    def forget(self, connection: Watched) -> None:
        slot = connection.deadline_slot
        if not slot:
            return
        connection.deadline_slot = 0
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(connection)
            if not bucket:
                del self._buckets[slot]

    def _tick(self) -> None:
        self._handle = None
        loop = self._loop()
        now = loop.time()
        due = math.floor(now / RESOLUTION)
        buckets = self._buckets
        self._ticking = True
        try:
            while self._done < due:
                self._done += 1
                bucket = buckets.pop(self._done, None)
                if not bucket:
                    continue
                for connection in bucket:
                    connection.deadline_slot = 0
                    try:
                        following = connection.deadline_reached(now)
                    except Exception:  # noqa: BLE001 - one connection's failure must not stop the others' checks
                        log.exception("checking the deadline of a connection from %s failed", connection.peer_text)
                        continue
                    if following is not None:
                        self.watch(connection, following)
        finally:
            self._ticking = False
            if buckets and self._handle is None:
                self._handle = loop.call_at((self._done + 1) * RESOLUTION, self._tick)

    def close(self) -> None:
        """Stop the timer (the broker shuts down); pending deadlines are dropped."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for bucket in self._buckets.values():
            for connection in bucket:
                connection.deadline_slot = 0
        self._buckets.clear()
