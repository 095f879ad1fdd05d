"""Background tasks: the one way the broker starts a task nobody awaits (``spawn``) and the one way its periodic
loops (certificate re-checks, OCSP and CRL refreshes, rate sampling) are stopped (``cancel_and_wait``).

The event loop keeps only weak references to tasks: a task started with ``create_task`` and then dropped can be
garbage-collected before it finishes (Python's documentation of ``asyncio.create_task``). ``spawn`` holds a
reference until the task is done, in the caller's own set (when it cancels them on stop) or in a module-wide one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Tasks spawned without a set of their caller's: held here until they are done.
_running: set[asyncio.Task[Any]] = set()


def spawn(coroutine: Coroutine[Any, Any, T], keep: set[asyncio.Task[Any]] | None = None) -> asyncio.Task[T]:
    """Run ``coroutine`` as a task on the running loop, referenced from ``keep`` (or a module-wide set) until it
    is done. What it raises is left to whoever awaits it or asks for its result, as with ``create_task``."""
    held = _running if keep is None else keep
    task = asyncio.get_running_loop().create_task(coroutine)
    held.add(task)
    task.add_done_callback(held.discard)
    return task


def running() -> int:
    """How many tasks ``spawn`` holds without a caller's set (for tests and diagnostics)."""
    return len(_running)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished, so nothing it holds outlives the caller's ``stop()``."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
