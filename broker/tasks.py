"""Background tasks: the one way the broker's periodic loops (certificate re-checks, OCSP and CRL refreshes, rate
sampling) are stopped."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait until it has finished, so nothing it holds outlives the caller's ``stop()``."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
