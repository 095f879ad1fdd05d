"""Flapping detection (EMQX's ``flapping_detect``), keyed by client id and by source address.

A client id that connects ``max_count`` times within ``window_time`` is banned for ``ban_time``; so is a source
address that connects ``address_max_count`` times within the same window, whatever client ids it uses (an
attacker rotating client ids, or sending empty ones, from one address is caught; 0 turns that off). A banned
client id or address has its CONNECTs refused with "banned" (5.0: 0x8A, 3.1.1: not authorized), counted in
``wharf_flapping_banned_total{key}`` (bans) and ``wharf_flapping_refused_total`` (CONNECTs refused while banned).

Memory is bounded: at most ``max_tracked`` keys of each kind are remembered (least recently seen forgotten
first), and at most ``max_tracked`` bans of each kind.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from .config.model import FlappingDetect
from .metrics import REGISTRY, Registry

log = logging.getLogger("wharf_broker.flapping")


class _Counter:
    """Connects per key within a window, and the bans they earned."""

    __slots__ = ("max_count", "window", "ban_time", "max_tracked", "windows", "banned", "bans")

    def __init__(self, max_count: int, config: FlappingDetect, bans) -> None:
        self.max_count = max_count
        self.window = config.window_time
        self.ban_time = config.ban_time
        self.max_tracked = config.max_tracked
        self.windows: OrderedDict[str, list] = OrderedDict()  # key -> [window start, connects in it]
        self.banned: dict[str, float] = {}  # key -> ban end
        self.bans = bans

    def is_banned(self, key: str, now: float) -> bool:
        until = self.banned.get(key)
        if until is None:
            return False
        if until <= now:
            del self.banned[key]
            return False
        return True

    def connected(self, key: str, now: float) -> bool:
        windows = self.windows
        entry = windows.get(key)
        if entry is None or now - entry[0] > self.window:
            entry = [now, 0]
            windows[key] = entry
        windows.move_to_end(key)
        entry[1] += 1
        while len(windows) > self.max_tracked:
            windows.popitem(last=False)
        if entry[1] < self.max_count:
            return False
        del windows[key]
        self.banned[key] = now + self.ban_time
        self.bans.inc()
        if len(self.banned) > self.max_tracked:
            self._expire(now)
        return True

    def _expire(self, now: float) -> None:
        banned = self.banned
        for key in [key for key, until in banned.items() if until <= now]:
            del banned[key]
        while len(banned) > self.max_tracked:  # still too many: forget the ones ending first
            del banned[min(banned, key=banned.__getitem__)]


class FlappingDetector:
    def __init__(self, config: FlappingDetect, registry: Registry = REGISTRY, clock=time.monotonic) -> None:
        self.enabled = config.enable
        self.max_count = config.max_count
        self.window = config.window_time
        self.ban_time = config.ban_time
        self.max_tracked = config.max_tracked
        self._clock = clock
        family = registry.counter("wharf_flapping_banned_total", "Client ids and source addresses banned for "
                                  "flapping, by key", ("key",))
        self._refused = registry.counter("wharf_flapping_refused_total", "CONNECTs refused while banned")
        self.client_ids = _Counter(config.max_count, config, family.labels(key="clientid"))
        self.addresses = _Counter(config.address_max_count, config, family.labels(key="address"))
        self.by_address = config.address_max_count > 0

    @property
    def banned(self) -> dict[str, float]:
        """Banned client ids -> ban end."""
        return self.client_ids.banned

    def is_banned(self, client_id: str, address: str | None = None) -> bool:
        now = self._clock()
        banned = (bool(client_id) and self.client_ids.is_banned(client_id, now)) or \
            (address is not None and self.by_address and self.addresses.is_banned(address, now))
        if banned:
            self._refused.inc()
        return banned

    def connected(self, client_id: str, address: str | None = None) -> bool:
        """Count one CONNECT of ``client_id`` from ``address``; True when this one gets either banned."""
        if not self.enabled:
            return False
        now = self._clock()
        banned = False
        if client_id and self.client_ids.connected(client_id, now):
            log.warning("client id %r banned for %.0fs: %d connects within %.0fs", client_id, self.ban_time,
                        self.max_count, self.window)
            banned = True
        if address is not None and self.by_address and self.addresses.connected(address, now):
            log.warning("address %s banned for %.0fs: %d connects within %.0fs", address, self.ban_time,
                        self.addresses.max_count, self.window)
            banned = True
        return banned

    def refuses(self, client_id: str, peer) -> bool:
        """Whether this CONNECT is refused: the client id or the address is banned, or this CONNECT gets one
        banned. ``peer`` is the connection's (host, port) or None."""
        address = peer[0] if peer else None
        return self.is_banned(client_id, address) or self.connected(client_id, address)
