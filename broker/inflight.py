"""Outgoing QoS 1/2 messages sent and not yet acknowledged, keyed by packet identifier."""

from __future__ import annotations

from .lazy import EMPTY, own

# States of an in-flight entry.
AWAIT_PUBACK = 1   # QoS 1 PUBLISH sent
AWAIT_PUBREC = 2   # QoS 2 PUBLISH sent
AWAIT_PUBCOMP = 3  # PUBREL sent

HELD = float("inf")  # ``sent_at`` of an entry not written yet (see ``Session._send``)


class InflightEntry:
    __slots__ = ("message", "qos", "retain", "sub_ids", "state", "sent_at", "seq")

    def __init__(self, message, qos: int, retain: bool, sub_ids: tuple, sent_at: float, seq: int = 0) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.state = AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC
        # HELD: a durable QoS 2 delivery whose packet id is not on disk yet (not on the wire either).
        self.sent_at = sent_at
        self.seq = seq  # the durable store's sequence number; 0 when not stored


class Inflight:
    """Entries in sending order (dicts keep insertion order), and the packet identifier allocator."""

    __slots__ = ("entries", "_last_id")

    def __init__(self) -> None:
        self.entries: dict[int, InflightEntry] = EMPTY  # a dict of its own from the first ``add`` (``lazy``)
        self._last_id = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: InflightEntry) -> int:
        """Store ``entry`` under a free packet identifier and return it."""
        entries = self.entries
        if entries is EMPTY:
            entries = self.entries = own(entries)
        packet_id = self._last_id
        while True:
            packet_id = packet_id + 1 if packet_id < 65535 else 1
            if packet_id not in entries:
                break
        self._last_id = packet_id
        entries[packet_id] = entry
        return packet_id

    def get(self, packet_id: int) -> InflightEntry | None:
        return self.entries.get(packet_id)

    def pop(self, packet_id: int) -> InflightEntry | None:
        return self.entries.pop(packet_id, None)

    def clear(self) -> None:
        self.entries = EMPTY
