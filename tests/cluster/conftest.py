"""A three-node NATS cluster with JetStream on loopback, and three wharf-broker processes joined through it.

``nats_cluster`` starts ``nats-server`` processes on ports found free at run time (client, route and
monitoring ports on 127.0.0.1), JetStream stores under the test's tmp dir, and waits until each answers its
``/healthz`` (JetStream included). ``cluster_nodes(count)`` then starts broker processes with
``cluster.enable`` pointed at all NATS servers, each with its own node name.
"""

from __future__ import annotations

import shutil
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"



def require_nats() -> None:
    """Skip (a failure under WHARF_STRICT_SKIPS=1) without nats-server or nats-py."""
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range (32768-60999): a port the kernel hands out itself can
    be taken, before nats-server binds it, as the source port of any outgoing connection of a busy test run."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class NatsNode:
    name: str
    client_port: int
    route_port: int
    monitor_port: int
    config_path: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.config_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class NatsCluster:
    def __init__(self, base: Path, size: int = 3, tls: dict | None = None) -> None:
        self.nodes: list[NatsNode] = []
        ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
        routes = ", ".join(f'"nats-route://127.0.0.1:{route}"' for _client, route, _mon in ports)
        self.scheme = "tls" if tls else "nats"
        # Clients (the brokers) must present a certificate the CA signed: mutual TLS.
        tls_block = (f'tls {{ cert_file: "{tls["cert"]}", key_file: "{tls["key"]}", ca_file: "{tls["ca"]}", '
                     f'verify: true, timeout: 5 }}') if tls else ""
        for index, (client, route, monitor) in enumerate(ports):
            name = f"nats-{index}"
            store = base / name
            store.mkdir(parents=True, exist_ok=True)
            config = base / f"{name}.conf"
            log = base / f"{name}.log"
            config.write_text(f"""
server_name: {name}
listen: "127.0.0.1:{client}"
http: "127.0.0.1:{monitor}"
log_file: "{log}"
jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 512MB }}
{tls_block}
cluster {{
  name: wharf-test
  listen: "127.0.0.1:{route}"
  routes: [{routes}]
}}
""")
            self.nodes.append(NatsNode(name, client, route, monitor, config, log))

    @property
    def urls(self) -> list[str]:
        return [node.url.replace("nats://", f"{self.scheme}://") for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not node.healthy():
                if not node.running():
                    raise AssertionError(f"{node.name} exited:\n{node.log_path.read_text(errors='replace')}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node.name} not healthy in {timeout}s")
                time.sleep(0.1)
        # JetStream needs its meta leader before streams can be created.
        while not self._meta_leader():
            if time.monotonic() > deadline:
                raise AssertionError("no JetStream meta leader elected")
            time.sleep(0.2)

    def _meta_leader(self) -> bool:
        import json
        for node in self.nodes:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz", timeout=2) as response:
                    info = json.load(response)
                if info.get("meta_cluster", {}).get("leader"):
                    return True
            except (OSError, ValueError):
                continue
        return False

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def nats_cluster(tmp_path):
    require_nats()
    for attempt in range(3):
        cluster = NatsCluster(tmp_path / f"nats-{attempt}" if attempt else tmp_path / "nats")
        try:
            cluster.start()
            break
        except AssertionError as exc:
            cluster.stop()
            # Another process took a chosen port between the check and nats-server's bind: choose again.
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    try:
        yield cluster
    finally:
        cluster.stop()


def node_config(name: str, nats_urls: list[str], extra: str = "", nats_extra: str = "") -> str:
    servers = ", ".join(f'"{url}"' for url in nats_urls)
    return f"""
node.name = "{name}"
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
cluster {{
  enable = true
  nats {{ servers = [{servers}], connect_timeout = 5s
    {nats_extra} }}
  replicas = 3
  interest_ttl = 6s
  takeover_timeout = 5s
}}
{extra}
"""


@pytest.fixture
def cluster_nodes(nats_cluster, broker_process):  # NATS set up first, so torn down after the brokers
    """Factory: ``cluster_nodes(count=3, extra="")`` -> list of BrokerProcess joined through ``nats_cluster``."""

    def start(count: int = 3, extra: str = "", names=None):
        names = names or [f"wharf-{index}@127.0.0.1" for index in range(count)]
        return [broker_process(node_config(name, nats_cluster.urls, extra), timeout=60) for name in names]

    return start
