"""The three brokers under test, each started fresh for a run with the same three listeners on 127.0.0.1:

- ``plain``: MQTT over TCP;
- ``tls``: TLS 1.3, server certificate only (one-way);
- ``mtls``: TLS 1.3, client certificate required and verified against the bench CA (mutual).

All three are configured alike where they can be: anonymous access, no per-client queue limit (so that a
subscriber that falls behind gets every QoS 1 message instead of having them dropped), logging at warning,
no $SYS publishing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import net
from bench.pki import Pki
from bench.processes import Child

DEFAULT_AMQTT_VENV = Path.home() / ".cache" / "wharf" / "bench-venv"
STARTUP_TIMEOUT = 20.0
REPO_ROOT = Path(__file__).resolve().parent.parent


class BrokerUnavailable(RuntimeError):
    """This broker cannot be run on this machine (missing binary, package or feature)."""


@dataclass
class RunningBroker:
    name: str
    child: Child
    ports: dict[str, int]  # "plain" | "tls" | "mtls" -> port
    log_path: Path
    # Ways to make it re-read its certificate: name -> callable(expected_fingerprint).
    reloaders: dict[str, object] = field(default_factory=dict)
    admin_port: int | None = None  # Wharf's admin API (EMQX-style /api/v5), where the broker has one

    @property
    def pid(self) -> int:
        return self.child.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        self.child.stop()


class Broker:
    """How to start one kind of broker; ``version()`` and ``unavailable_reason()`` describe it."""

    name: str

    def unavailable_reason(self) -> str | None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def start(self, workdir: Path, pki: Pki) -> RunningBroker:
        raise NotImplementedError

    @property
    def can_reload_certificates(self) -> bool:
        return False


def _spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> tuple[Child, Path]:
    log_path = workdir / f"{name}.log"
    # The child keeps its own copy of the descriptor.
    with open(log_path, "wb") as log:
        child = Child(argv, name=name, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    return child, log_path


def _wait_ready(running: RunningBroker) -> RunningBroker:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        for port in running.ports.values():
            net.wait_for_port(port, deadline, alive=lambda: running.child.running)
    except (TimeoutError, RuntimeError) as exc:
        running.stop()
        raise RuntimeError(f"{running.name} did not start: {exc}\n{running.log_tail()}") from exc
    return running


# --- mosquitto -----------------------------------------------------------------------------------------------

def mosquitto_config(ports: dict[str, int], pki: Pki) -> str:
    lines = []
    if os.geteuid() == 0:
        # Started as root, mosquitto would switch to the 'mosquitto' user, who cannot read the bench's keys.
        lines.append("user root")
    return "\n".join(lines + [
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence false",
        # Same delivery guarantees as the others: no queue limit for a subscriber that falls behind.
        "max_queued_messages 0",
        "sys_interval 0",
        # asyncio (Wharf, amqtt) sets TCP_NODELAY on every connection; mosquitto does only when asked.
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        f"listener {ports['plain']} {net.HOST}",
        f"listener {ports['tls']} {net.HOST}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "tls_version tlsv1.3",
        f"listener {ports['mtls']} {net.HOST}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        f"cafile {pki.ca_cert}",
        "require_certificate true",
        "tls_version tlsv1.3",
        "",
    ])


class Mosquitto(Broker):
    name = "mosquitto"

    def unavailable_reason(self) -> str | None:
        if not shutil.which("mosquitto"):
            return "the mosquitto binary is not installed (Debian package 'mosquitto')"
        return None

    def version(self) -> str:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"mosquitto version (\S+)", out)
        return match.group(1) if match else "unknown"

    @property
    def can_reload_certificates(self) -> bool:
        return True  # whether it really serves the new certificate is what the rotation scenario measures

    def start(self, workdir: Path, pki: Pki) -> RunningBroker:
        ports = {"plain": net.free_port(), "tls": net.free_port(), "mtls": net.free_port()}
        config = workdir / "mosquitto.conf"
        config.write_text(mosquitto_config(ports, pki))
        child, log_path = _spawn(self.name, [shutil.which("mosquitto") or "mosquitto", "-c", str(config)], workdir)
        running = RunningBroker(self.name, child, ports, log_path)
        running.reloaders = {"sighup": lambda fingerprint: child.signal(signal.SIGHUP)}
        return _wait_ready(running)


# --- amqtt ---------------------------------------------------------------------------------------------------

def amqtt_config(ports: dict[str, int], pki: Pki) -> str:
    # JSON is YAML; only the anonymous-auth plugin, i.e. without the default packet logger and $SYS plugins.
    config = {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{net.HOST}:{ports['plain']}"},
            "tls": {"type": "tcp", "bind": f"{net.HOST}:{ports['tls']}", "ssl": True,
                    "certfile": str(pki.server_cert), "keyfile": str(pki.server_key)},
            # amqtt verifies a client certificate when one is presented (CERT_OPTIONAL) but cannot require one.
            "mtls": {"type": "tcp", "bind": f"{net.HOST}:{ports['mtls']}", "ssl": True,
                     "certfile": str(pki.server_cert), "keyfile": str(pki.server_key),
                     "cafile": str(pki.ca_cert)},
        },
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    return json.dumps(config, indent=2) + "\n"


class Amqtt(Broker):
    name = "amqtt"

    def __init__(self, venv: Path = DEFAULT_AMQTT_VENV) -> None:
        self.venv = venv

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "amqtt"

    def unavailable_reason(self) -> str | None:
        if not self.executable.exists():
            return (f"amqtt is not installed in {self.venv} "
                    f"(python -m venv {self.venv} && {self.venv}/bin/pip install amqtt)")
        return None

    def version(self) -> str:
        out = subprocess.run([str(self.venv / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('amqtt'))"],
                             capture_output=True, text=True, check=False).stdout.strip()
        return out or "unknown"

    def start(self, workdir: Path, pki: Pki) -> RunningBroker:
        ports = {"plain": net.free_port(), "tls": net.free_port(), "mtls": net.free_port()}
        config = workdir / "amqtt.yaml"
        config.write_text(amqtt_config(ports, pki))
        child, log_path = _spawn(self.name, [str(self.executable), "-c", str(config)], workdir)
        return _wait_ready(RunningBroker(self.name, child, ports, log_path))


# --- Wharf ---------------------------------------------------------------------------------------------------

def _hocon_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid HOCON quoted string


def wharf_config(ports: dict[str, int], pki: Pki, dashboard_port: int) -> str:
    ssl_common = (f"certfile = {_hocon_string(str(pki.server_cert))}\n"
                  f"      keyfile = {_hocon_string(str(pki.server_key))}\n"
                  f"      versions = [tlsv1.3]")
    return f"""\
node.event_loop = auto
# Warning, like the others (they log errors and warnings only). At info Wharf logs no line for a normal
# connect or disconnect either (only listeners, refusals and abnormal closes): the CPU per TLS connection is
# the same at both levels; its "listener ... on HOST:PORT" lines are not needed here (the ports are chosen here).
log.level = warning
mqtt {{
  # Same delivery guarantees as the others: no queue limit for a subscriber that falls behind.
  max_mqueue_len = infinity
}}
# Like mosquitto's defaults: no cap on the number of retained messages (the retained scenario stores up to 1M).
retainer.max_retained_messages = infinity
listeners {{
  tcp.default {{ bind = "{net.HOST}:{ports['plain']}" }}
  ssl.default {{
    bind = "{net.HOST}:{ports['tls']}"
    ssl_options {{
      {ssl_common}
    }}
  }}
  ssl.mutual {{
    bind = "{net.HOST}:{ports['mtls']}"
    ssl_options {{
      {ssl_common}
      cacertfile = {_hocon_string(str(pki.ca_cert))}
      verify = verify_peer
      fail_if_no_peer_cert = true
    }}
  }}
  ws.default {{ enable = false }}
  wss.default {{ enable = false }}
}}
dashboard.listeners.http.bind = "{net.HOST}:{dashboard_port}"
"""


class Wharf(Broker):
    name = "wharf"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def unavailable_reason(self) -> str | None:
        probe = subprocess.run([self.python, "-m", "wharf_broker", "--version"], capture_output=True,
                               text=True, cwd=REPO_ROOT, timeout=60, env=_wharf_env(), check=False)
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            return f"python -m wharf_broker is not runnable yet ({last})"
        return None

    def version(self) -> str:
        out = subprocess.run([self.python, "-c", "import importlib.metadata as m; print(m.version('wharf'))"],
                             capture_output=True, text=True, cwd=REPO_ROOT, check=False).stdout.strip()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO_ROOT, check=False).stdout.strip()
        return f"{out or 'unknown'} ({commit})" if commit else (out or "unknown")

    @property
    def can_reload_certificates(self) -> bool:
        return True

    def start(self, workdir: Path, pki: Pki) -> RunningBroker:
        ports = {"plain": net.free_port(), "tls": net.free_port(), "mtls": net.free_port()}
        dashboard_port = net.free_port()
        config = workdir / "wharf.conf"
        config.write_text(wharf_config(ports, pki, dashboard_port))
        child, log_path = _spawn(self.name, [self.python, "-m", "wharf_broker", "--config", str(config)], workdir,
                                 env=_wharf_env())
        running = RunningBroker(self.name, child, ports, log_path, admin_port=dashboard_port)
        running.reloaders = {
            "sighup": lambda fingerprint: child.signal(signal.SIGHUP),
            "admin-api": lambda fingerprint: _wharf_api_reload(dashboard_port, "ssl:default", fingerprint),
        }
        _wait_ready(running)
        try:
            net.wait_for_port(dashboard_port, time.monotonic() + STARTUP_TIMEOUT, alive=lambda: child.running)
        except (TimeoutError, RuntimeError) as exc:
            running.stop()
            raise RuntimeError(f"wharf's admin API did not start: {exc}\n{running.log_tail()}") from exc
        return running


def _wharf_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _wharf_api_reload(port: int, listener_id: str, fingerprint: str) -> None:
    """POST /api/v5/listeners/{id}/reload, waiting (server side) until the files carry ``fingerprint``."""
    body = json.dumps({"fingerprint": fingerprint, "timeout": 10}).encode()
    request = urllib.request.Request(f"http://{net.HOST}:{port}/api/v5/listeners/{listener_id}/reload", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    # No proxy: the request must stay on the loopback interface whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=15) as response:
        response.read()


ALL_BROKERS = {"wharf": Wharf, "mosquitto": Mosquitto, "amqtt": Amqtt}
