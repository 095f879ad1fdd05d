"""Flapping detection (EMQX's ``flapping_detect``): a client id that connects ``max_count`` times within
``window_time`` is banned for ``ban_time``: its CONNECTs are refused with "banned" (5.0: 0x8A, 3.1.1: not
authorized) and counted in ``wharf_flapping_banned_total`` (bans) and ``wharf_flapping_refused_total``
(CONNECTs refused while banned).

Memory is bounded: at most ``max_tracked`` client ids are remembered (least recently seen forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from .config.model import FlappingDetect
from .metrics import REGISTRY, Registry


class FlappingDetector:
    def __init__(self, config: FlappingDetect, registry: Registry = REGISTRY, clock=time.monotonic) -> None:
        self.enabled = config.enable
        self.max_count = config.max_count
        self.window = config.window_time
        self.ban_time = config.ban_time
        self.max_tracked = config.max_tracked
        self._clock = clock
        # client id -> [window start, connects in this window]
        self._windows: OrderedDict[str, list] = OrderedDict()
        self.banned: dict[str, float] = {}  # client id -> ban end
        self._bans = registry.counter("wharf_flapping_banned_total", "Client ids banned for flapping")
        self._refused = registry.counter("wharf_flapping_refused_total", "CONNECTs refused while banned")

    def is_banned(self, client_id: str) -> bool:
        until = self.banned.get(client_id)
        if until is None:
            return False
        if until <= self._clock():
            del self.banned[client_id]
            return False
        self._refused.inc()
        return True

    def connected(self, client_id: str) -> bool:
        """Count one CONNECT of ``client_id``; True when this one gets it banned."""
        if not self.enabled or not client_id:
            return False
        now = self._clock()
        entry = self._windows.get(client_id)
        if entry is None or now - entry[0] > self.window:
            entry = [now, 0]
            self._windows[client_id] = entry
        self._windows.move_to_end(client_id)
        entry[1] += 1
        while len(self._windows) > self.max_tracked:
            self._windows.popitem(last=False)
        if entry[1] < self.max_count:
            return False
        del self._windows[client_id]
        self.banned[client_id] = now + self.ban_time
        self._bans.inc()
        if len(self.banned) > self.max_tracked:
            self._expire_bans(now)
        return True

    def _expire_bans(self, now: float) -> None:
        for client_id in [cid for cid, until in self.banned.items() if until <= now]:
            del self.banned[client_id]
        while len(self.banned) > self.max_tracked:  # still too many: forget the ones ending first
            del self.banned[min(self.banned, key=self.banned.get)]
