"""Will messages: published when a client goes away without a normal DISCONNECT, possibly after a delay.

A 5.0 will delay postpones the will; the client reconnecting with the same client id in the meantime cancels
it, and the session ending first publishes it early (the delay is capped by the session expiry).
``forget(client_id)`` is told whenever a pending will is published or cancelled (the durable store drops
its copy); ``cancel_all`` at shutdown forgets nothing, so stored wills fire after a restart.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from .router import Message


class WillScheduler:
    __slots__ = ("_publish", "_pending", "_forget")

    def __init__(self, publish: Callable[[Message], object], forget: Callable[[str], object] | None = None) -> None:
        self._publish = publish
        self._forget = forget
        self._pending: dict[str, tuple[asyncio.TimerHandle, Message]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def schedule(self, client_id: str, message: Message, delay: float) -> None:
        """Publish ``message`` for ``client_id`` now (delay 0) or after ``delay`` seconds."""
        self.cancel(client_id)
        if delay <= 0:
            self._publish(message)
            return
        handle = asyncio.get_running_loop().call_later(delay, self._fire, client_id)
        self._pending[client_id] = (handle, message)

    def _fire(self, client_id: str) -> None:
        entry = self._pending.pop(client_id, None)
        if entry is not None:
            if self._forget is not None:
                self._forget(client_id)
            self._publish(entry[1])

    def fire_now(self, client_id: str) -> None:
        """The session ended before the delay did: publish the pending will at once."""
        entry = self._pending.pop(client_id, None)
        if entry is not None:
            entry[0].cancel()
            if self._forget is not None:
                self._forget(client_id)
            self._publish(entry[1])

    def cancel(self, client_id: str) -> bool:
        entry = self._pending.pop(client_id, None)
        if entry is None:
            return False
        entry[0].cancel()
        if self._forget is not None:
            self._forget(client_id)
        return True

    def cancel_all(self) -> None:
        for handle, _message in self._pending.values():
            handle.cancel()
        self._pending.clear()
