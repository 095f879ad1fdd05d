"""The periodic re-check of a listener's certificate files (``ssl_options.reload_interval``, default 120 s).

Content, not metadata, decides: ``TlsListenerRuntime.reload()`` compares a digest of the files' bytes, so a
Kubernetes Secret's ``..data`` symlink flip, ``cp -p`` and same-second rewrites are all seen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..tasks import cancel_and_wait

if TYPE_CHECKING:
    from .runtime import TlsListenerRuntime

log = logging.getLogger("wharf.tls")


class PeriodicReloader:
    def __init__(self, runtime: "TlsListenerRuntime") -> None:
        self._runtime = runtime
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def interval_changed(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            interval = self._runtime.current_generation.policy.reload_interval
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
                continue  # the interval changed: start a new wait with it
            except asyncio.TimeoutError:
                pass
            try:
                await self._runtime.reload()
                # CRLs from distribution points refresh on their own clock: re-check open connections too.
                self._runtime.kick_revoked()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the re-check must survive anything and try again next tick
                log.exception("TLS %s: periodic certificate re-check failed", self._runtime.listener_id)
