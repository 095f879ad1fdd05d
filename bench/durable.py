"""Durable storage: QoS 1 throughput to a persistent-session subscriber, and restart-to-ready time.

``python -m bench.durable [--messages 100000] [--repeats 3] [--publishers 4] [--window 64]
[--restart-sessions 10000] [--restart-messages 100000]`` runs, side by side in one run (each broker fresh, one
after the other, on 127.0.0.1, the order rotated in every repetition):

- ``wharf-memory``: Wharf with ``durable_storage.enable = false``;
- ``wharf-durable``: Wharf with ``durable_storage { enable = true, synchronous = full }`` -- every PUBACK only
  after its message is fsync'd (group commit);
- ``wharf-durable-normal``: the same with ``synchronous = normal`` (survives SIGKILL, not a power loss);
- ``mosquitto-persist``: mosquitto with ``persistence true`` (it saves its state at ``autosave_interval`` and on
  shutdown, never per message: what it acknowledged since the last save is lost on SIGKILL).

Throughput: ``--publishers`` 3.1.1 clients each keep ``--window`` QoS 1 PUBLISHes unacknowledged to one
subscriber with a persistent session (clean session 0, QoS 1, online, acknowledging as it reads). The rate is
messages acknowledged to the publishers per second, and the subscriber must receive every one; beside it, the
broker's CPU time per message (user + system from ``/proc``, steadier than the rate on a shared machine). With
``--repeats`` above 1 a summary follows: per row the median and range of the rates, and the ratios of Wharf
durable (``full``) to Wharf in memory and to mosquitto, each taken within one repetition.

Restart: a Wharf store with ``--restart-sessions`` persistent sessions and ``--restart-messages`` queued QoS 1
messages is written through the store API, then the broker is started on it; the figure is the time from
process start to its "ready" log line (listeners accepting), and the same for an empty store.

The clients are raw asyncio sockets (no client library) in this process; on a small machine they share the
CPU with the broker, so compare rows of one run rather than absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _connect(client_id: str, clean: bool) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02 if clean else 0x00]) + (60).to_bytes(2, "big") + _string(client_id)
    return b"\x10" + _varint(len(body)) + body


def _publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _varint(len(body)) + body


class _Broker:
    def __init__(self, name: str, argv: list[str], workdir: Path, port: int, ready: str | None,
                 admin_port: int | None = None) -> None:
        self.name = name
        self.port = port
        self.admin_port = admin_port
        self.log_path = workdir / f"{name}.log"
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.ready_after = self._wait_ready(ready)

    def _wait_ready(self, line: str | None) -> float:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            if line is not None:
                if line in self.log_path.read_text(errors="replace"):
                    return time.monotonic() - self.started
            else:
                try:
                    socket.create_connection((HOST, self.port), timeout=0.2).close()
                    return time.monotonic() - self.started
                except OSError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} not ready: {self.log_path.read_text()[-2000:]}")

    def store_counters(self) -> str:
        """Commits and changes of the durable store so far (from /metrics), or ""."""
        if self.admin_port is None:
            return ""
        import urllib.request
        with urllib.request.urlopen(f"http://{HOST}:{self.admin_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            for name in ("wharf_store_commits_total", "wharf_store_changes_total"):
                if line.startswith(name + " "):
                    values[name] = float(line.split()[1])
        commits = values.get("wharf_store_commits_total", 0)
        if not commits:
            return ""
        return f", {commits:.0f} commits, {values['wharf_store_changes_total'] / commits:.1f} changes each"

    def cpu(self) -> float:
        """The broker's CPU time so far (user + system, seconds), from /proc; 0 where there is none."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wharf(name: str, workdir: Path, durable: str | None) -> _Broker:
    port = _free_port()
    admin_port = _free_port()
    store = ""
    if durable is not None:
        store = f'durable_storage {{ enable = true, data_dir = "{workdir / "data"}", synchronous = {durable} }}'
    config = workdir / f"{name}.conf"
    config.write_text(f"""
node.event_loop = auto
log.level = info
mqtt {{ max_mqueue_len = infinity, max_inflight = 1000 }}
listeners.tcp.default {{ bind = "{HOST}:{port}" }}
dashboard.listeners.http.bind = "{HOST}:{admin_port}"
{store}
""")
    return _Broker(name, [sys.executable, "-m", "wharf_broker", "--config", str(config)], workdir, port,
                   " ready (", admin_port)


def _mosquitto(workdir: Path) -> _Broker:
    port = _free_port()
    config = workdir / "mosquitto.conf"
    (workdir / "mosq").mkdir(exist_ok=True)
    lines = ["user root"] if os.geteuid() == 0 else []
    config.write_text("\n".join(lines + [
        "allow_anonymous true", "persistence true", f"persistence_location {workdir / 'mosq'}/",
        "max_queued_messages 0", "max_inflight_messages 1000", "sys_interval 0", "set_tcp_nodelay true",
        "log_dest stderr", "log_type error", f"listener {port} {HOST}", ""]))
    return _Broker("mosquitto-persist", [shutil.which("mosquitto") or "mosquitto", "-c", str(config)], workdir,
                   port, None)


async def _open(port: int, client_id: str, clean: bool):
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(_connect(client_id, clean))
    ack = await reader.readexactly(4)
    if ack[:2] != b"\x20\x02" or ack[3] != 0:
        raise RuntimeError(f"CONNACK {ack!r}")
    return reader, writer


async def _subscriber(port: int, expected: int, started: asyncio.Event, done: asyncio.Future) -> None:
    reader, writer = await _open(port, "bench-durable-sub", False)
    writer.write(b"\x82" + _varint(2 + 2 + len("bench/durable") + 1) + b"\x00\x01" + _string("bench/durable")
                 + b"\x01")
    await reader.readexactly(5)  # SUBACK
    started.set()
    received = 0
    buffer = b""
    while received < expected:
        data = await reader.read(262144)
        if not data:
            break
        buffer += data
        acks = []
        pos = 0
        while True:
            if len(buffer) - pos < 2:
                break
            length, shift, i = 0, 0, pos + 1
            while i < len(buffer):
                byte = buffer[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            else:
                break
            if len(buffer) - i < length:
                break
            if buffer[pos] >> 4 == 3:
                topic_len = int.from_bytes(buffer[i:i + 2], "big")
                acks.append(b"\x40\x02" + buffer[i + 2 + topic_len:i + 4 + topic_len])
                received += 1
            pos = i + length
        buffer = buffer[pos:]
        if acks:
            writer.write(b"".join(acks))
    writer.close()
    done.set_result(received)


async def _publisher(port: int, index: int, count: int, window: int, payload: bytes) -> None:
    reader, writer = await _open(port, f"bench-durable-pub-{index}", True)
    sent = acked = 0
    pending = b""
    while acked < count:
        burst = []
        while sent < count and sent - acked < window:
            sent += 1
            burst.append(_publish("bench/durable", payload, sent % 65535 + 1))
        if burst:
            writer.write(b"".join(burst))
        data = await reader.read(65536)
        if not data:
            raise RuntimeError("publisher disconnected")
        pending += data
        acked += len(pending) // 4
        pending = pending[len(pending) // 4 * 4:]
    writer.close()


async def _throughput(port: int, messages: int, publishers: int, window: int, payload: int) -> tuple[float, int]:
    started = asyncio.Event()
    done = asyncio.get_running_loop().create_future()
    per = messages // publishers
    subscriber = asyncio.ensure_future(_subscriber(port, per * publishers, started, done))
    await started.wait()
    body = os.urandom(payload)
    t0 = time.perf_counter()
    await asyncio.gather(*(_publisher(port, i, per, window, body) for i in range(publishers)))
    elapsed = time.perf_counter() - t0
    received = await asyncio.wait_for(done, 60)
    await subscriber
    return per * publishers / elapsed, received


def _fill_store(data_dir: Path, sessions: int, messages: int) -> None:
    """Write ``sessions`` persistent sessions with ``messages`` queued QoS 1 messages through the store API."""
    sys.path.insert(0, str(REPO / ".pyshim"))
    from wharf_broker.config.model import DurableStorage, MqttSettings
    from wharf_broker.metrics import Registry
    from wharf_broker.router import Message, Subscription
    from wharf_broker.session import Session
    from wharf_broker.store import open_store

    async def fill() -> None:
        store = open_store(DurableStorage(enable=True, data_dir=str(data_dir)), Registry())
        await store.open(asyncio.get_running_loop())
        settings = MqttSettings()
        all_sessions = []
        for n in range(sessions):
            session = Session(f"restart-{n}", settings, lambda m, r: None, lambda: 0.0)
            session.subscriptions[f"restart/{n}"] = Subscription(f"restart/{n}", 1)
            store.put_session(session, 7200.0, time.time() + 7200)
            all_sessions.append(session)
        payload = os.urandom(64)
        for n in range(messages):
            session = all_sessions[n % sessions]
            store.queued(session, Message(f"restart/{n % sessions}", payload, 1), 1, False, ())
            if n % 5000 == 0:
                await store.when_durable(None)
        await store.when_durable(None)
        await store.close()

    asyncio.run(fill())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-timeout", type=float, default=120.0, help="seconds before a run is given up")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--restart-sessions", type=int, default=10000)
    parser.add_argument("--restart-messages", type=int, default=100000)
    parser.add_argument("--only", default="", help="comma-separated subset of the rows")
    args = parser.parse_args(argv)
    rows = {
        "wharf-memory": lambda d: _wharf("wharf-memory", d, None),
        "wharf-durable": lambda d: _wharf("wharf-durable", d, "full"),
        "wharf-durable-normal": lambda d: _wharf("wharf-durable-normal", d, "normal"),
        "mosquitto-persist": _mosquitto,
    }
    chosen = [name for name in rows if not args.only or name in args.only.split(",")]
    if not shutil.which("mosquitto") and "mosquitto-persist" in chosen:
        print("  mosquitto-persist: mosquitto is not installed")
        chosen.remove("mosquitto-persist")
    print(f"QoS 1 to a persistent-session subscriber: {args.messages} messages, {args.publishers} publishers x "
          f"window {args.window}, payload {args.payload} B, {args.repeats} repetition(s)")
    runs: list[dict[str, float]] = []
    cpus: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        results: dict[str, float] = {}
        order = chosen[repeat % len(chosen):] + chosen[:repeat % len(chosen)]
        for name in order:
            with tempfile.TemporaryDirectory(prefix="wharf-bench-durable-") as tmp:
                broker = rows[name](Path(tmp))
                try:
                    cpu = broker.cpu()
                    rate, received = asyncio.run(asyncio.wait_for(
                        _throughput(broker.port, args.messages, args.publishers, args.window, args.payload),
                        args.run_timeout))
                    cpu = broker.cpu() - cpu
                    counters = broker.store_counters()
                finally:
                    broker.stop()
            results[name] = rate
            cpus.setdefault(name, []).append(cpu / args.messages * 1e6)
            print(f"  {name:<22} {rate:>9.0f} msg/s   broker CPU {cpu / args.messages * 1e6:5.1f} us/msg   "
                  f"(subscriber received {received}{counters})")
        for label, other in (("in-memory", "wharf-memory"), ("mosquitto", "mosquitto-persist")):
            if other in results and "wharf-durable" in results:
                print(f"  durable / {label}: {results['wharf-durable'] / results[other]:.2f}x")
        runs.append(results)
    if len(runs) > 1:
        print(f"Summary over {len(runs)} repetitions (median, range):")
        for name in chosen:
            rates = sorted(run[name] for run in runs)
            print(f"  {name:<22} {statistics.median(rates):>9.0f} msg/s   ({rates[0]:.0f} - {rates[-1]:.0f})   "
                  f"broker CPU {statistics.median(cpus[name]):5.1f} us/msg ({min(cpus[name]):.1f} - "
                  f"{max(cpus[name]):.1f})")
        for label, other in (("in-memory", "wharf-memory"), ("mosquitto", "mosquitto-persist")):
            if other in chosen and "wharf-durable" in chosen:
                ratios = sorted(run["wharf-durable"] / run[other] for run in runs)
                print(f"  durable / {label}: {statistics.median(ratios):.2f}x ({ratios[0]:.2f}x - {ratios[-1]:.2f}x)")

    if args.restart_sessions:
        with tempfile.TemporaryDirectory(prefix="wharf-bench-restart-") as tmp:
            workdir = Path(tmp)
            broker = _wharf("wharf-empty", workdir, "full")
            empty = broker.ready_after
            broker.stop()
            shutil.rmtree(workdir / "data")
            t0 = time.monotonic()
            _fill_store(workdir / "data", args.restart_sessions, args.restart_messages)
            fill = time.monotonic() - t0
            size = sum(p.stat().st_size for p in (workdir / "data").iterdir()) / 1e6
            broker = _wharf("wharf-restart", workdir, "full")
            loaded = broker.ready_after
            store_line = [line for line in broker.log_path.read_text().splitlines() if "durable store" in line]
            broker.stop()
        print(f"Restart to ready: empty store {empty:.2f}s; {args.restart_sessions} sessions + "
              f"{args.restart_messages} queued messages ({size:.1f} MB, written in {fill:.1f}s) {loaded:.2f}s")
        if store_line:
            print(f"  {store_line[-1].split(': ', 1)[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
