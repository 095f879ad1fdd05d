"""Message rates for the Overview: the broker's counters sampled every few seconds, averaged over a window."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from .. import metrics
from ..tasks import cancel_and_wait

SAMPLE_EVERY = 2.0
WINDOW = 30.0
COUNTERS = {"received": "wharf_messages_received_total", "sent": "wharf_messages_sent_total"}


def _read() -> dict[str, float]:
    values = {}
    for key, name in COUNTERS.items():
        metric = metrics.REGISTRY.get(name)
        values[key] = sum(value for _, value in metric.samples()) if metric is not None else 0.0
    return values


class MessageRates:
    def __init__(self) -> None:
        self._samples: deque[tuple[float, dict[str, float]]] = deque()
        self._task: asyncio.Task | None = None

    def sample(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, _read()))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW:
            self._samples.popleft()

    def per_second(self) -> dict[str, float]:
        """Messages per second over the last ``WINDOW`` seconds (0 until two samples exist)."""
        self.sample()
        (first_at, first), (last_at, last) = self._samples[0], self._samples[-1]
        elapsed = last_at - first_at
        if elapsed < 0.5:
            return {key: 0.0 for key in COUNTERS}
        return {key: max(last[key] - first[key], 0.0) / elapsed for key in COUNTERS}

    def totals(self) -> dict[str, float]:
        return _read()

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
