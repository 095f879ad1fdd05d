"""Child processes of the harness: started in their own session, timed and CPU-accounted, always cleaned up.

Every child is registered here so that ``terminate_all`` (called on exit, Ctrl-C and SIGTERM) can end it. A
child's exit is collected with ``os.wait4`` by a waiter thread, which gives its exact exit time and the CPU
it used (``ru_utime + ru_stime``) even when it was killed at a deadline.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_live: dict[int, Child] = {}
_live_lock = threading.Lock()


class Child:
    """One child process with its exit time and resource usage, reaped by a waiter thread."""

    def __init__(self, argv: Sequence[str], *, name: str, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.started_at = time.monotonic()
        # A session of its own: Ctrl-C in the terminal reaches only the harness, which then ends the children.
        self.popen = subprocess.Popen(self.argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                                      start_new_session=True)
        self.pid = self.popen.pid
        self.exited_at: float | None = None
        self.exit_code: int | None = None
        self.cpu_seconds: float | None = None
        self._done = threading.Event()
        with _live_lock:
            _live[self.pid] = self
        threading.Thread(target=self._reap, name=f"reap-{name}", daemon=True).start()

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        self.exited_at = time.monotonic()
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        # The Popen object must not try to reap the pid again (it may have been reused).
        self.popen.returncode = self.exit_code
        with _live_lock:
            _live.pop(self.pid, None)
        self._done.set()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True when the child has exited within ``timeout`` seconds."""
        return self._done.wait(timeout)

    def signal(self, signum: int) -> None:
        if self.running:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the child is reaped."""
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        if not self.wait(grace):
            self.signal(signal.SIGKILL)
            self.wait(5.0)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(5.0)


def terminate_all() -> None:
    """End every child still running (SIGTERM to all, then SIGKILL to the stragglers)."""
    with _live_lock:
        children = list(_live.values())
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    for child in children:
        child.wait(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.running:
            child.kill()


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
