"""The wheel, installed into a fresh virtualenv: ``wharf-broker`` starts from an empty directory on its embedded
default, generates its CA in the state directory, serves TLS and mutual TLS with it, and reuses it on a restart.

Slow (a wheel build). The wheel is built from a copy of what the image copies (pyproject.toml, README.md,
broker/, operator/), so nothing from the checkout (etc/certs, a stale build/) can leak in. The virtualenv sees the
system site-packages for the dependencies (nothing is downloaded to install it); the test proves the broker that
runs is the virtualenv's copy. Listeners bind ephemeral loopback ports through WHARF_*_BIND.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from delivery_support import ROOT

pytestmark = pytest.mark.slow

LISTENER_LINE = re.compile(r"listener (?P<id>\w+:[\w-]+) on (?P<host>[^\s:]+):(?P<port>\d+)")
READY_LINE = re.compile(r"broker \S+ ready")
BLOCK_OPERATOR_EXTRA = '''
import sys

class _WithoutOperatorExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("kopf", "kubernetes"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _WithoutOperatorExtra())
'''


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=kwargs.pop("timeout", 300), **kwargs)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def can_build_without_isolation() -> bool:
    """setuptools can make a wheel offline when the `wheel` package is there or setuptools has bdist_wheel."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        from setuptools.command import bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("broker", "operator"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    # Offline when setuptools can; else pip fetches the build backend from the package index.
    isolation = ["--no-build-isolation"] if can_build_without_isolation() else []
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(work / "dist"), str(source),
        env=clean_env())
    [wheel] = (work / "dist").glob("wharf-*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
    # --ignore-installed: the system's (editable) wharf must not satisfy the requirement.
    run(str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
        str(wheel), env=clean_env())
    return venv


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the test run's PYTHONPATH (which points at the source tree)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WHARF_HOME", "XDG_STATE_HOME")}
    return {**env, **extra}


class VenvBroker:
    """``<venv>/bin/wharf-broker`` with no arguments, from ``cwd``, on ephemeral loopback ports."""

    def __init__(self, venv: Path, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        binds = {f"WHARF_{kind}_BIND": "127.0.0.1:0" for kind in ("TCP", "SSL", "WS", "WSS", "DASHBOARD")}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([str(venv / "bin" / "wharf-broker")], cwd=cwd, stdout=out,
                                         stderr=subprocess.STDOUT, env={**env, **binds, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while not READY_LINE.search(self.log):
            assert self.proc.poll() is None, f"wharf-broker exited with {self.proc.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"wharf-broker never got ready:\n{self.log}"
            time.sleep(0.1)
        self.ports = {m["id"]: int(m["port"]) for m in LISTENER_LINE.finditer(self.log)}
        assert all(m["host"] == "127.0.0.1" for m in LISTENER_LINE.finditer(self.log)), self.log

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def tls_client(client_id: str, certs: Path, mutual: bool) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(cafile=str(certs / "rootCA.crt"))  # verifies "localhost" too
    if mutual:
        context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    client.tls_set_context(context)
    return client


def exchange_over_tls(port: int, certs: Path) -> None:
    """A subscriber on one-way TLS gets what a publisher on mutual TLS sends."""
    received: queue.Queue = queue.Queue()
    subscriber = tls_client("wheel-sub", certs, mutual=False)
    subscriber.on_message = lambda _c, _u, message: received.put(message.payload)
    publisher = tls_client("wheel-pub", certs, mutual=True)
    for client in (subscriber, publisher):
        client.connect("localhost", port)
        client.loop_start()
    try:
        subscriber.subscribe("wheel/test", qos=1)
        for _ in range(20):  # until the subscription is in place (SUBACK is asynchronous), bounded
            publisher.publish("wheel/test", b"from the wheel", qos=1).wait_for_publish(timeout=5)
            try:
                assert received.get(timeout=1) == b"from the wheel"
                return
            except queue.Empty:
                continue
        pytest.fail("no message came back over TLS")
    finally:
        for client in (subscriber, publisher):
            client.disconnect()
            client.loop_stop()


def test_wheel_broker_runs_from_anywhere_on_its_generated_pki(venv: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    env = clean_env(HOME=str(home))
    # The virtualenv's copy is what runs, not the checkout's.
    where = run(str(venv / "bin" / "python"), "-c", "import wharf_broker; print(wharf_broker.__file__)",
                cwd=empty, env=env).stdout.strip()
    assert where.startswith(str(venv)) and "site-packages" in where, where

    certs = home / ".local" / "state" / "wharf" / "certs"  # no WHARF_HOME, no XDG_STATE_HOME
    broker = VenvBroker(venv, empty, env, tmp_path / "first.log")
    try:
        log = broker.log
        assert f"generated a local CA {certs}/rootCA.crt" in log
        assert f"trust the CA {certs}/rootCA.crt; client certificate {certs}/client.crt and key " \
               f"{certs}/client.key" in log
        assert "Traceback" not in log and "not found" not in log
        assert list(empty.iterdir()) == []  # nothing written to the working directory
        exchange_over_tls(broker.ports["ssl:default"], certs)
        if shutil.which("mosquitto_pub"):  # the README's commands, with the generated files
            for extra in ([], ["--cert", str(certs / "client.crt"), "--key", str(certs / "client.key")]):
                run("mosquitto_pub", "-h", "localhost", "-p", str(broker.ports["ssl:default"]), "--cafile",
                    str(certs / "rootCA.crt"), *extra, "-t", "demo", "-m", "hello", "-q", "1", timeout=30)
    finally:
        assert broker.stop() == 0, broker.log
    ca = (certs / "rootCA.crt").read_bytes()
    server = (certs / "server.crt").read_bytes()

    # A second start reuses the CA and the certificates; clients that trust the CA keep working.
    broker = VenvBroker(venv, empty, env, tmp_path / "second.log")
    try:
        assert "generated a " not in broker.log, broker.log
        assert (certs / "rootCA.crt").read_bytes() == ca and (certs / "server.crt").read_bytes() == server
        exchange_over_tls(broker.ports["ssl:default"], certs)
    finally:
        assert broker.stop() == 0, broker.log


def test_wheel_operator_without_its_extra_says_what_to_install(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_OPERATOR_EXTRA)
    proc = subprocess.run([str(venv / "bin" / "wharf-operator")], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=clean_env(PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 1
    assert proc.stderr == ("wharf-operator: the operator's dependencies are not installed (no module 'kopf'): "
                           "pip install 'wharf[operator]'\n")
