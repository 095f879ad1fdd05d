"""Shared fixtures: a real broker process, and the paths of the bundled test PKI.

``broker_process`` is a factory: ``broker_process(config_text)`` writes the config to a file, starts
``python -m wharf_broker --config FILE`` as a real process, reads the listener log lines
(``listener <type>:<name> on <host>:<port>``, see ``broker/listeners.py``) for the ports the kernel chose
(configs use port 0), waits until ``/readyz`` answers 200 (every listener accepting), and yields a
``BrokerProcess``. At the end of the test every process still running gets SIGTERM and must exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A wharf-operator started by a test may only call broker pods on loopback addresses (unless the test passes
# its own --allow-pod-network).
os.environ.setdefault("WHARF_OPERATOR_ALLOW_POD_NETWORKS", "127.0.0.0/8")
CERTS = REPO / "etc" / "certs"

LISTENER_LINE = re.compile(r"listener (?P<id>\w+:[\w-]+) on (?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)")
ADMIN_LINE = re.compile(r"admin api on (?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)")
READY_LINE = re.compile(r"broker \S+ ready")

# A config with one tcp listener and the admin API, both on ephemeral loopback ports.
MINIMAL_CONFIG = """
listeners.tcp.default { bind = "127.0.0.1:0" }
dashboard.listeners.http.bind = "127.0.0.1:0"
"""


def have_tls() -> bool:
    try:
        from wharf_broker.tls import TlsListenerRuntime  # noqa: F401
    except ImportError:
        return False
    return True


requires_tls = pytest.mark.skipif(not have_tls(), reason="wharf_broker.tls.TlsListenerRuntime is not available")


# In CI (WHARF_STRICT_SKIPS=1, set by .ci/run) a skipped test is a failure: a missing tool or package must not
# turn a requirement into a silent skip. Only the kind suite may skip, since no kind node image exists on our
# machines.
STRICT_SKIPS = os.environ.get("WHARF_STRICT_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail") and "e2e" not in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and skips are failures under WHARF_STRICT_SKIPS=1: {reason}"


class BrokerStartError(AssertionError):
    pass


@dataclass
class BrokerProcess:
    proc: subprocess.Popen
    config_path: Path | None
    log_path: Path
    token: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    admin_url: str | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def port(self, listener_id: str) -> int:
        if listener_id not in self.ports:
            raise KeyError(f"listener {listener_id} is not up; up: {sorted(self.ports)}\n{self.log}")
        return self.ports[listener_id]

    def running(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """Wait until the log (from offset ``start``) matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log, start)
            if match:
                return match
            if time.monotonic() > deadline or not self.running() and not regex.search(self.log, start):
                raise AssertionError(f"log never matched {pattern!r}:\n{self.log}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the broker and wait for it to exit; returns the exit status."""
        if self.running():
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"broker did not stop within {timeout}s after signal {signum}:\n{self.log}") from None

    def admin(self, method: str, path: str, body: bytes | None = None, token: str | None = "default",
              timeout: float = 10.0) -> tuple[int, bytes]:
        """A request to the admin API (with the broker's token unless ``token`` says otherwise)."""
        assert self.admin_url, "the admin API is not enabled"
        request = urllib.request.Request(self.admin_url + path, data=body, method=method)
        token = self.token if token == "default" else token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _start_broker(tmp_path: Path, config_text: str | None, args: list[str], env: dict[str, str] | None,
                  token: str | None, timeout: float, index: int) -> BrokerProcess:
    config_path = None
    command = [sys.executable, "-m", "wharf_broker"]
    if config_text is not None:
        config_path = tmp_path / f"broker-{index}.conf"
        config_path.write_text(config_text)
        command += ["--config", str(config_path)]
    command += args
    log_path = tmp_path / f"broker-{index}.log"
    # The embedded default generates its CA in the state directory and keeps durable state: both in the test's
    # directory, never in the real home of the test user.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WHARF_DATA_DIR": str(tmp_path / f"data-{index}"),
                **(env or {})}
    if config_text is None and "WHARF_HOME" not in (env or {}):
        full_env["WHARF_HOME"] = str(tmp_path / "wharf-home")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path, env=full_env)
    broker = BrokerProcess(proc, config_path, log_path, token=token)
    deadline = time.monotonic() + timeout
    while not READY_LINE.search(broker.log):
        if not broker.running():
            raise BrokerStartError(f"broker exited with {proc.returncode} before it was ready:\n{broker.log}")
        if time.monotonic() > deadline:
            broker.stop(signal.SIGKILL)
            raise BrokerStartError(f"broker not ready within {timeout}s:\n{broker.log}")
        time.sleep(0.05)
    text = broker.log
    for match in LISTENER_LINE.finditer(text):
        broker.ports[match["id"]] = int(match["port"])
        broker.hosts[match["id"]] = match["host"].strip("[]")
    admin = ADMIN_LINE.search(text)
    if admin:
        broker.admin_url = f"http://{admin['host']}:{admin['port']}"
        # /readyz is 200 once every listener is accepting.
        while True:
            try:
                status, _ = broker.admin("GET", "/readyz", token=None, timeout=2)
            except OSError:
                status = 0
            if status == 200:
                break
            if time.monotonic() > deadline or not broker.running():
                broker.stop(signal.SIGKILL)
                raise BrokerStartError(f"/readyz never answered 200:\n{broker.log}")
            time.sleep(0.05)
    return broker


@pytest.fixture
def broker_process(tmp_path):
    """Factory: ``broker_process(config_text=MINIMAL_CONFIG, args=(), env=None, token=None)``.

    ``config_text=None`` runs the embedded default (no ``--config``), with ``WHARF_HOME`` in ``tmp_path`` unless
    ``env`` names one (its generated certificates go there). Every broker still running at the end of
    the test is stopped with SIGTERM and must exit with status 0.
    """
    started: list[BrokerProcess] = []

    def start(config_text: str | None = MINIMAL_CONFIG, *, args=(), env=None, token=None,
              timeout: float = 30.0) -> BrokerProcess:
        broker = _start_broker(tmp_path, config_text, list(args), env, token, timeout, len(started))
        started.append(broker)
        return broker

    yield start
    failures = []
    for broker in started:
        if broker.running():
            status = broker.stop()
            if status != 0:
                failures.append(f"broker exited with {status} after SIGTERM:\n{broker.log}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def certs() -> Path:
    """The bundled test PKI (``etc/certs``: rootCA, server and client certificates)."""
    if not (CERTS / "server.crt").exists():
        pytest.skip("etc/certs is missing")
    return CERTS
