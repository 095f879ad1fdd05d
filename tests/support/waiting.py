"""Waiting for something another process, thread or task will make true: one polling rule for the whole suite.

``eventually`` (in async tests) and ``wait_until`` (in blocking ones) call ``check`` until it returns something
truthy and return that. ``ignore`` names the exceptions that mean "not yet" (types, or a predicate on the
exception), e.g. a 404 from an API server while an object is being created; any other exception propagates. After
``timeout`` seconds the test fails with ``NotReached`` naming ``what`` and the last result. The timeout is a
safety net against hangs, never an assertion on speed (speed is measured in ``bench/``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar, Union

T = TypeVar("T")
Ignore = Union[tuple[type[BaseException], ...], Callable[[BaseException], bool]]


class NotReached(AssertionError, TimeoutError):
    """What a test waited for did not happen in time (a failed assertion, and a timeout for ``except`` clauses)."""


def _ignored(error: BaseException, ignore: Ignore) -> bool:
    return isinstance(error, ignore) if isinstance(ignore, tuple) else ignore(error)


def _not_reached(what: str, timeout: float, last: Any) -> NotReached:
    return NotReached(f"{what} not reached within {timeout:.0f}s; last: {last!r}")


async def eventually(check: Callable[[], Any], what: str = "the condition", timeout: float = 15.0,
                     interval: float = 0.05, *, ignore: Ignore = ()) -> Any:
    """Poll ``check`` on the running loop (a coroutine or future it returns is awaited) until it is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except Exception as error:  # noqa: BLE001 - filtered by ``ignore``
            if not _ignored(error, ignore):
                raise
            last = error
        else:
            if last:
                return last
        if loop.time() >= deadline:
            raise _not_reached(what, timeout, last)
        await asyncio.sleep(interval)


def wait_until(check: Callable[[], T], what: str = "the condition", timeout: float = 15.0, interval: float = 0.05,
               *, ignore: Ignore = (), clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """Poll ``check``, blocking, until it is truthy (``clock`` and ``sleep`` can be replaced to test this)."""
    deadline = clock() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as error:  # noqa: BLE001 - filtered by ``ignore``
            if not _ignored(error, ignore):
                raise
            last = error
        else:
            if last:
                return last
        if clock() >= deadline:
            raise _not_reached(what, timeout, last)
        sleep(interval)
