"""``EMPTY``: the one empty dict that every idle session shares until it has something to keep.

An empty dict costs 64 bytes; a session has three (subscriptions, QoS 2 receipts, in-flight messages) and an idle
connection uses none of them. Each starts as ``EMPTY`` and is replaced by a dict of its own when first written
(``own``). ``EMPTY`` reads as any empty dict does; writing into it raises, so a path that forgot ``own`` fails
loudly instead of sharing its entries with every other session.
"""

from __future__ import annotations

from typing import Any, NoReturn


class _Empty(dict):
    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("the shared empty dict is read-only: take a dict of your own first (lazy.own)")

    __setitem__ = setdefault = update = __ior__ = _refuse


EMPTY: dict[Any, Any] = _Empty()


def own(mapping: dict) -> dict:
    """``mapping`` itself, or a new dict when it is ``EMPTY`` (assign the result back)."""
    return {} if mapping is EMPTY else mapping
