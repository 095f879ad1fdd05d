"""The password-file authenticator: ``username:hash`` lines, reloaded live.

Lines are ``<username>:<hash>`` (``hashing.py`` formats); ``#`` starts a comment line. A username not in the
file is ``ignore`` (the next authenticator may know it), a wrong password is ``deny`` (bad user name or
password). The file's SHA-256 is re-checked every ``reload_interval`` and on ``reload()`` (SIGHUP); a file that
does not parse is logged and the previous users stay.

Hash checks are slow by design, so they run on the authenticator's own pool of ``hash_workers`` threads
(``wharf-hash-*``; never the event loop, and not the loop's default executor, which other work shares). At most
``hash_queue_size`` checks wait for a thread; beyond that a CONNECT is refused at once with 0x89 "server busy"
(counted as ``wharf_limit_exceeded_total{limit="authentication.password_file.hash_queue_size"}``), so a flood
of wrong passwords costs a bounded amount of CPU and memory. Repeated failures are throttled before they get
here (``throttle.py``). A bounded cache remembers recent successful checks (keyed by a salted digest of the
password, never the password itself) so that reconnecting clients do not pay the hash again; the cache is
dropped whenever the file changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from ..auth import AuthResult, ConnectInfo
from ..config.model import PasswordFileAuthn
from ..limits import exceeded
from ..mqtt import reason_codes as rc
from ..watched_file import WatchedFile
from . import hashing

log = logging.getLogger("wharf_broker.authn")

_VERIFIED_MAX = 4096


class PasswordFileError(ValueError):
    pass


def parse_password_file(text: str, source: str = "<password file>") -> dict[str, str]:
    """username -> hash; raises ``PasswordFileError`` naming the first bad line."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, sep, encoded = line.rpartition(":")
        if not sep or not username:
            raise PasswordFileError(f"{source}:{number}: expected <username>:<hash>")
        try:
            hashing.check_format(encoded)
        except hashing.HashFormatError as error:
            raise PasswordFileError(f"{source}:{number}: user {username!r}: {error}") from None
        if username in users:
            raise PasswordFileError(f"{source}:{number}: user {username!r} appears twice")
        users[username] = encoded
    return users


class PasswordFileAuthenticator:
    name = "password_file"

    def __init__(self, config: PasswordFileAuthn) -> None:
        self.path = config.path
        self.reload_interval = config.reload_interval
        self.users: dict[str, str] = {}
        self._file = WatchedFile(self.path, "password file", parse_password_file, self._install, PasswordFileError,
                                 lambda: f"{len(self.users)} users", log, self.reload_interval)
        self._pepper = os.urandom(16)  # the cache keys are useless outside this process
        self._verified: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self.hash_workers = config.hash_workers
        self.max_pending = config.hash_workers + config.hash_queue_size
        self.pending = 0  # checks running or waiting for a thread
        self._executor: ThreadPoolExecutor | None = None
        self.reload()

    # -- loading
    def reload(self) -> bool:
        """Re-read the file if its content changed; True when new users are in force. The first load raises
        ``PasswordFileError`` / ``OSError``; later failures are logged and keep the old users."""
        return self._file.reload()

    def _install(self, users: dict[str, str]) -> None:
        self.users = users
        self._verified.clear()
        log.info("password file %s: %d users", self.path, len(users))

    @property
    def digest(self) -> str:
        return self._file.digest

    def start(self) -> None:
        self._file.start()

    async def stop(self) -> None:
        await self._file.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _verify(self, password: bytes, encoded: str) -> bool:
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(self.hash_workers, thread_name_prefix="wharf-hash")
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, hashing.verify_password, password,
                                                                    encoded)
        finally:
            self.pending -= 1

    # -- the hook
    async def authenticate(self, info: ConnectInfo) -> AuthResult:
        if info.username is None:
            return AuthResult.ignore()
        encoded = self.users.get(info.username)
        if encoded is None:
            return AuthResult.ignore()
        password = info.password or b""
        key = (info.username, hashlib.sha256(self._pepper + password).digest())
        if self._verified.get(key) == encoded:
            self._verified.move_to_end(key)
            return AuthResult.allow(source=self.name)
        if self.pending >= self.max_pending:
            exceeded("authentication.password_file.hash_queue_size")
            log.warning("password check of user %r refused: %d checks already waiting", info.username,
                        self.pending)
            return AuthResult.deny(rc.SERVER_BUSY, "server busy")
        ok = await self._verify(password, encoded)
        if not ok:
            return AuthResult.deny(rc.BAD_USER_NAME_OR_PASSWORD, "bad user name or password")
        if self.users.get(info.username) == encoded:  # still the same entry after the wait
            self._verified[key] = encoded
            if len(self._verified) > _VERIFIED_MAX:
                self._verified.popitem(last=False)
        return AuthResult.allow(source=self.name)
