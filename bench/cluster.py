"""Cross-node scenario: delivery rate and latency through a Wharf cluster, against a single node.

    python -m bench.cluster                      # 3 NATS servers, 2 Wharf nodes, 50k messages per rate run
    python -m bench.cluster --messages 200000 --latency-messages 5000 --json cluster.json

Starts a three-node NATS cluster with JetStream (``nats-server``, ports found free on 127.0.0.1, stores in a
temporary directory) and two Wharf nodes joined through it, then measures, for QoS 0 and QoS 1:

- rate: ``mosquitto_pub -l`` fed N messages → ``mosquitto_sub -C N``; messages ÷ (publisher start → subscriber
  exit). "single" has publisher and subscriber on node 0, "cross" publishes on node 0 and subscribes on node 1;
- latency: one paho-mqtt publisher at a fixed rate, the send time in each payload, one subscriber in the same
  process (same clock); p50/p99/max of arrival − send.

Everything is bounded by ``--run-timeout``; every process is ended on exit.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.net import free_port, wait_for_port
from bench.stats import percentile

REPO_ROOT = Path(__file__).resolve().parents[1]
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class Cluster:
    """Three NATS servers and ``nodes`` Wharf nodes, all on 127.0.0.1 under ``workdir``."""

    def __init__(self, workdir: Path, nodes: int = 2) -> None:
        self.workdir = workdir
        self.node_count = nodes
        self.procs: list[subprocess.Popen] = []
        self.mqtt_ports: list[int] = []
        self.nats_urls: list[str] = []

    def start(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
        routes = ", ".join(f'"nats-route://127.0.0.1:{route}"' for _c, route, _m in ports)
        for index, (client, route, monitor) in enumerate(ports):
            store = self.workdir / f"nats-{index}"
            store.mkdir(parents=True, exist_ok=True)
            config = self.workdir / f"nats-{index}.conf"
            config.write_text(f'server_name: nats-{index}\nlisten: "127.0.0.1:{client}"\n'
                              f'http: "127.0.0.1:{monitor}"\n'
                              f'jetstream {{ store_dir: "{store}", max_file_store: 1GB }}\n'
                              f'cluster {{ name: bench, listen: "127.0.0.1:{route}", routes: [{routes}] }}\n')
            self._spawn([NATS_SERVER, "-c", str(config)], f"nats-{index}.log")
            self.nats_urls.append(f"nats://127.0.0.1:{client}")
        for _client, _route, monitor in ports:
            self._wait_http(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", deadline)
        self._wait_meta_leader([monitor for _c, _r, monitor in ports], deadline)
        servers = ", ".join(f'"{url}"' for url in self.nats_urls)
        for index in range(self.node_count):
            port = free_port()
            config = self.workdir / f"wharf-{index}.conf"
            config.write_text(f'node.name = "bench-{index}@127.0.0.1"\n'
                              f'log.level = warning\n'
                              f'listeners.tcp.default {{ bind = "127.0.0.1:{port}" }}\n'
                              f'listeners.ssl.default.enable = false\n'
                              f'listeners.ws.default.enable = false\n'
                              f'listeners.wss.default.enable = false\n'
                              f'dashboard.enable = false\n'
                              f'mqtt.max_mqueue_len = infinity\n'
                              f'cluster {{ enable = true, nats {{ servers = [{servers}] }} }}\n')
            proc = self._spawn([sys.executable, "-m", "wharf_broker", "--config", str(config)], f"wharf-{index}.log")
            wait_for_port(port, deadline, alive=lambda proc=proc: proc.poll() is None)
            self.mqtt_ports.append(port)

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        with open(self.workdir / log_name, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _wait_http(url: str, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never answered 200")
            time.sleep(0.1)

    @staticmethod
    def _wait_meta_leader(monitor_ports: list[int], deadline: float) -> None:
        while time.monotonic() < deadline:
            for port in monitor_ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=2) as response:
                        if json.load(response).get("meta_cluster", {}).get("leader"):
                            return
                except (OSError, ValueError):
                    continue
            time.sleep(0.2)
        raise RuntimeError("no JetStream meta leader")

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the brokers first, then NATS
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_for_route(pub_port: int, sub_port: int, topic: str, timeout: float) -> None:
    """Until a message published on one node reaches a subscriber on the other (interest has spread)."""
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(sub_port), "-t", topic, "-C", "1", "-W", str(int(timeout))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", "-p", str(pub_port), "-t", topic, "-m", "probe"], check=False,
                           timeout=10)
            time.sleep(0.2)
        if sub.poll() != 0:
            raise RuntimeError(f"no route from {pub_port} to {sub_port}")
    finally:
        if sub.poll() is None:
            sub.kill()
        sub.wait()


def rate_run(pub_port: int, sub_port: int, qos: int, messages: int, payload_size: int, timeout: float) -> dict:
    topic = f"bench/rate/{time.monotonic_ns()}"
    wait_for_route(pub_port, sub_port, topic + "/ready", timeout)
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(sub_port), "-t", topic, "-q", str(qos), "-C", str(messages),
                            "-W", str(int(timeout))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # the subscription crosses the cluster
    line = b"x" * payload_size + b"\n"
    started = time.monotonic()
    pub = subprocess.Popen(["mosquitto_pub", "-p", str(pub_port), "-t", topic, "-q", str(qos), "-l"],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pub.stdin.write(line * messages)
        pub.stdin.close()
        status = sub.wait(timeout + 5)
        elapsed = time.monotonic() - started
    except subprocess.TimeoutExpired:
        status, elapsed = None, time.monotonic() - started
    finally:
        for proc in (pub, sub):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return {"rate": messages / elapsed if status == 0 else None, "complete": status == 0, "seconds": elapsed}


def latency_run(pub_port: int, sub_port: int, qos: int, messages: int, rate: float, timeout: float) -> dict:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"bench/latency/{time.monotonic_ns()}"
    wait_for_route(pub_port, sub_port, topic, timeout)
    arrivals: queue.Queue = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-lat-sub", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, msg: arrivals.put((time.monotonic_ns(), msg.payload))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect("127.0.0.1", sub_port)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-lat-pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", pub_port)
    pub.loop_start()
    try:
        sub.subscribe(topic, qos)
        subscribed.wait(timeout)
        time.sleep(0.5)
        while not arrivals.empty():
            arrivals.get_nowait()
        interval = 1.0 / rate
        next_at = time.monotonic()
        for _ in range(messages):
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            pub.publish(topic, str(time.monotonic_ns()).encode(), qos)
        samples = []
        deadline = time.monotonic() + timeout
        while len(samples) < messages and time.monotonic() < deadline:
            try:
                arrived, payload = arrivals.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if payload.isdigit():
                samples.append((arrived - int(payload)) / 1e6)
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()
    samples.sort()
    if not samples:
        return {"received": 0}
    return {"received": len(samples), "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": samples[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages per rate run")
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--latency-messages", type=int, default=2_000)
    parser.add_argument("--latency-rate", type=float, default=500.0, help="messages per second")
    parser.add_argument("--run-timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    for tool in (NATS_SERVER, "mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool) and not Path(tool).exists():
            print(f"{tool} is not installed (apt-get install nats-server mosquitto-clients)", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="wharf-bench-cluster-"))
    cluster = Cluster(workdir)
    results: dict = {}
    try:
        cluster.start()
        node0, node1 = cluster.mqtt_ports
        for placement, sub_port in (("single", node0), ("cross", node1)):
            for qos in (0, 1):
                rate = rate_run(node0, sub_port, qos, args.messages, args.payload_size, args.run_timeout)
                latency = latency_run(node0, sub_port, qos, args.latency_messages, args.latency_rate,
                                      args.run_timeout)
                results[f"{placement}-qos{qos}"] = {**rate, **latency}
                print(f"{placement:6} qos{qos}: {json.dumps(results[f'{placement}-qos{qos}'])}", flush=True)
    finally:
        cluster.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n| path | QoS | rate (msg/s) | latency p50 (ms) | p99 (ms) | max (ms) |")
    print("|---|---|---|---|---|---|")
    for key, values in results.items():
        placement, qos = key.split("-")
        rate = f"{values['rate']:.0f}" if values.get("rate") else "incomplete"
        print(f"| {placement} | {qos[-1]} | {rate} | {values.get('p50_ms', float('nan')):.2f} | "
              f"{values.get('p99_ms', float('nan')):.2f} | {values.get('max_ms', float('nan')):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
