"""A configuration file re-read live: the password file and the ACL file reload the same way.

``WatchedFile.reload()`` re-reads the file and, when its SHA-256 changed, parses it and hands the result to its
owner's ``install``. The first load raises (the broker does not start on a broken file); a later one that fails
(unreadable, not UTF-8, does not parse) is logged and the owner keeps what it has. ``start()`` re-checks every
``reload_interval`` seconds (0: only on ``reload()``, which SIGHUP calls); ``stop()`` ends that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class WatchedFile(Generic[T]):
    def __init__(self, path: str, what: str, parse: Callable[[str, str], T], install: Callable[[T], None],
                 error: type[Exception], keeping: Callable[[], str], log: logging.Logger,
                 reload_interval: float) -> None:
        """``parse(text, path)`` raises ``error`` for a bad file; ``what`` names the file in messages ("ACL
        file"), ``keeping()`` what its owner keeps when a reload fails ("12 rules"), in ``log``."""
        self.path = path
        self.what = what
        self.digest = ""
        self.reload_interval = reload_interval
        self._parse = parse
        self._install = install
        self._error = error
        self._keeping = keeping
        self._log = log
        self._watcher: asyncio.Task[None] | None = None

    def reload(self) -> bool:
        """Re-read the file if its content changed; True when the new content is installed. The first load
        raises ``error`` (naming the file); later failures are logged and change nothing."""
        first = not self.digest
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest == self.digest:
                return False
            parsed = self._parse(data.decode("utf-8"), self.path)
        except (OSError, UnicodeDecodeError, self._error) as error:
            if first:
                raise self._error(f"{self.what} {self.path}: {error}") from None
            self._log.error("%s %s not reloaded, keeping %s: %s", self.what, self.path, self._keeping(), error)
            return False
        self.digest = digest
        self._install(parsed)
        return True

    def start(self) -> None:
        if self._watcher is None and self.reload_interval > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            self.reload()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
