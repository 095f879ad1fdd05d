"""The scenarios of the benchmark, each run against one freshly started broker at a time.

A scenario returns named values (``RunResult.values``); the metrics it declares say how to print them and
which direction is better. Every wait is bounded by the run timeout; a run cut short is marked incomplete
and its rate is what was delivered until then.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import clients, mqtt_wire, native, net, procstat, retained_load
from bench.brokers import Broker, RunningBroker
from bench.pki import Pki, fingerprint_of_der, rotate_server_certificate
from bench.processes import Child
from bench.stats import percentile

READY_TIMEOUT = 15.0
STALL_TIMEOUT = 10.0
MARKER_SETTLE_SECONDS = 0.2


@dataclass
class Settings:
    messages: int = 200_000
    payload_size: int = 64
    run_timeout: float = 60.0
    fanout_subscribers: int = 10
    latency_messages: int = 5_000
    latency_rate: float = 1_000.0
    connections: int = 2_000  # per connect-rate run, split over the client processes
    connect_client: str = "auto"  # "c" (bench/connect_rate.c), "python" (bench/connector.py) or "auto"
    idle_connections: int = 3_000
    rotations: int = 5
    rotation_interval: float = 2.0
    rotation_publishers: int = 20
    rotation_rate: float = 25.0  # per publisher
    retained_sizes: tuple[int, ...] = (0, 100_000, 1_000_000)
    retained_subscribes: int = 500
    scale_steps: tuple[int, ...] = (1_000, 5_000, 10_000, 19_000)
    workdir: Path = Path(".")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    scale: float = 1.0  # multiply the stored value by this for display
    integer: bool = False  # a count: printed as a whole number
    # Counts that must be zero (losses, drops) are summarised by their worst run, not hidden by a median.
    worst_case: bool = False


@dataclass
class RunResult:
    values: dict[str, float] = field(default_factory=dict)
    complete: bool = True
    note: str = ""


class ScenarioError(RuntimeError):
    """The run could not be measured (the broker refused, a client failed): the note says why."""


def _python_module_argv(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def _wait_all(children: list[Child], deadline: float) -> bool:
    for child in children:
        if not child.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True


def _stop_all(children: list[Child]) -> None:
    for child in children:
        child.kill()


def _client_utilisation(children: list[Child]) -> float:
    """The busiest client's CPU time over its lifetime (1.0 = one core saturated: then it was the bottleneck)."""
    busiest = 0.0
    for child in children:
        if child.cpu_seconds is None or child.exited_at is None:
            continue
        lifetime = max(child.exited_at - child.started_at, 1e-6)
        busiest = max(busiest, child.cpu_seconds / lifetime)
    return busiest


MIN_CPU_TICKS = 5


def _cpu_or_none(cpu_seconds: float, notes: list[str]) -> float | None:
    """The broker's CPU time, or None (with a note) when it is too few clock ticks to divide meaningfully."""
    ticks = round(cpu_seconds * procstat.CLOCK_TICKS_PER_SECOND)
    if ticks < MIN_CPU_TICKS:
        notes.append(f"broker CPU not reported: {ticks} clock tick(s) is below /proc's resolution for this run")
        return None
    return cpu_seconds


def _clients_total_cpu(children: list[Child], elapsed: float) -> float:
    """All clients' CPU time over the run (in cores): what they took from a machine the broker shares."""
    return sum(c.cpu_seconds or 0.0 for c in children) / max(elapsed, 1e-6)


def _wait_for_file_content(path: Path, minimum: int, deadline: float, child: Child) -> bool:
    while time.monotonic() < deadline:
        try:
            if path.stat().st_size >= minimum:
                return True
        except FileNotFoundError:
            pass
        if not child.running:
            return path.exists() and path.stat().st_size >= minimum
        time.sleep(0.01)
    return False


class Scenario:
    name: str
    description: str
    metrics: tuple[Metric, ...]
    needs_own_pki = False

    def unsupported_reason(self, broker: Broker) -> str | None:
        return None

    def configure(self, settings: Settings) -> None:
        """Called once before the runs, for scenarios whose metrics depend on the settings."""

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        raise NotImplementedError


# --- helpers shared by the message scenarios ---------------------------------------------------------------

def _publish_ready_marker(broker: RunningBroker, mode: str, pki: Pki, topic: str, rundir: Path) -> None:
    with open(rundir / "marker.err", "wb") as stderr:
        marker = Child(clients.retained_marker_argv(broker.ports[mode], mode, pki, topic=topic), name="marker",
                       stderr=stderr)
    if not marker.wait(READY_TIMEOUT) or marker.exit_code != 0:
        marker.kill()
        raise ScenarioError(f"could not publish the retained READY marker: "
                            f"{(rundir / 'marker.err').read_text(errors='replace').strip()}")


def _start_subscribers(broker: RunningBroker, mode: str, pki: Pki, *, topic: str, qos: int, count: int,
                       subscribers: int, rundir: Path, output_format: str | None = None,
                       nodelay: bool = False) -> list[tuple[Child, Path]]:
    """Subscribers that exit after ``count`` messages plus the marker; returns once each has the marker."""
    started = []
    for index in range(subscribers):
        out = rundir / f"sub{index}.out"
        with open(out, "wb") as stdout, open(rundir / f"sub{index}.err", "wb") as stderr:
            child = Child(clients.subscriber_argv(broker.ports[mode], mode, pki, topic=topic, qos=qos,
                                                  count=count + 1,
                                                  client_id=f"bench-sub-{index}-{uuid.uuid4().hex[:6]}",
                                                  output_format=output_format, nodelay=nodelay),
                          name=f"sub{index}", stdout=stdout, stderr=stderr)
        started.append((child, out))
    deadline = time.monotonic() + READY_TIMEOUT
    for index, (child, out) in enumerate(started):
        if not _wait_for_file_content(out, len(clients.READY_MARKER), deadline, child):
            _stop_all([c for c, _ in started])
            err = (rundir / f"sub{index}.err").read_text(errors="replace").strip()
            raise ScenarioError(f"subscriber {index} never received the retained READY marker "
                                f"(is it subscribed? retained messages supported?) {err}")
    return started


def _feed(publisher: Child, payload: Path) -> threading.Thread:
    """Copy the payload file into the publisher's stdin from a thread, and leave the pipe open.

    mosquitto_pub -l (2.0.11) disconnects as soon as its input ends, dropping QoS 1 messages it has read but
    not yet sent: so its input is closed only once the subscribers have everything (``_close_input``).
    """
    def copy() -> None:
        try:
            with open(payload, "rb") as source:
                shutil.copyfileobj(source, publisher.popen.stdin, 1 << 20)
            publisher.popen.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the publisher died or was stopped; the subscribers' counts tell what arrived

    thread = threading.Thread(target=copy, name="feed-publisher", daemon=True)
    thread.start()
    return thread


def _close_input(publisher: Child, feeder: threading.Thread | None = None) -> None:
    """Let the publisher finish: end its input, give it a moment to disconnect cleanly, then make sure."""
    if feeder is not None and feeder.is_alive():
        publisher.kill()  # still blocked writing: the run was cut short
        feeder.join(5)
    try:
        publisher.popen.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    if not publisher.wait(5.0):
        publisher.kill()


# --- message rate -----------------------------------------------------------------------------------------------

class Throughput(Scenario):
    """One publisher (mosquitto_pub -l) to N subscribers (mosquitto_sub -C), fixed-size payloads."""

    def __init__(self, name: str, *, mode: str, qos: int, subscribers: int = 1) -> None:
        self.name = name
        self.mode = mode
        self.qos = qos
        self.subscribers = subscribers
        fan = f"1 → {subscribers}"
        transport = {"plain": "plain TCP", "tls": "TLS 1.3 (server certificate)",
                     "mtls": "mutual TLS 1.3 (client certificate required)"}[mode]
        self.description = f"{fan}, QoS {qos}, {transport}"
        self.metrics = (
            Metric("rate", "delivered msg/s", "msg/s", True),
            Metric("broker_cpu_per_msg", "broker CPU per delivered msg", "µs", False, 1e6),
            Metric("broker_cpu_util", "broker CPU (1.0 = one core)", "", False),
            Metric("client_cpu_util", "busiest client's CPU (1.0 = one core)", "", False),
            Metric("client_cpu_total", "all clients' CPU (cores)", "", False),
        )

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        subs_count = self.subscribers
        topic = f"bench/{self.name}/{uuid.uuid4().hex[:8]}"
        payload = settings.workdir / f"payload-{settings.messages}x{settings.payload_size}.txt"
        if not payload.exists():
            clients.write_payload_file(payload, settings.messages, settings.payload_size)
        port = broker.ports[self.mode]
        _publish_ready_marker(broker, self.mode, pki, topic, rundir)
        subs = _start_subscribers(broker, self.mode, pki, topic=topic, qos=self.qos, count=settings.messages,
                                  subscribers=subs_count, rundir=rundir)
        sub_children = [child for child, _ in subs]
        # A subscriber exits after count + 1 messages: if the broker delivered the retained marker twice, that
        # is one data message fewer for it to wait for (amqtt 0.12 does this), which is not a loss.
        time.sleep(MARKER_SETTLE_SECONDS)
        markers = [clients.count_markers(out) for _, out in subs]
        cpu_before = procstat.cpu_seconds(broker.pid)
        started = time.monotonic()
        with open(rundir / "pub.err", "wb") as stderr:
            publisher = Child(clients.publisher_argv(port, self.mode, pki, topic=topic, qos=self.qos,
                                                     client_id=f"bench-pub-{uuid.uuid4().hex[:6]}"),
                              name="pub", stdin=subprocess.PIPE, stderr=stderr)
        feeder = _feed(publisher, payload)
        complete = _wait_all(sub_children, started + settings.run_timeout)
        ended = max(c.exited_at for c in sub_children) if complete else time.monotonic()
        cpu_after = procstat.cpu_seconds(broker.pid)
        if not complete:
            _stop_all(sub_children)
        _close_input(publisher, feeder)
        delivered = sum(clients.count_received(out.stat().st_size, settings.payload_size, marker_count)
                        for (_, out), marker_count in zip(subs, markers))
        expected = sum(settings.messages + 1 - marker_count for marker_count in markers)
        elapsed = max(ended - started, 1e-6)
        notes = []
        cpu = _cpu_or_none(cpu_after - cpu_before, notes)
        repeated = sum(1 for marker_count in markers if marker_count > 1)
        if repeated:
            notes.append(f"the retained marker was delivered more than once to {repeated} of {subs_count} "
                         f"subscribers (each then waited for one message fewer)")
        if not complete:
            notes.append(f"cut at {settings.run_timeout:.0f} s")
        if delivered != expected:
            notes.append(f"{delivered}/{expected} delivered")
        failed_subs = [c.name for c in sub_children if c.exit_code not in (0, None) and complete]
        if failed_subs:
            notes.append("subscriber(s) " + ", ".join(failed_subs) + " exited with an error: "
                         + (rundir / f"{failed_subs[0]}.err").read_text(errors="replace")[:200])
        note = "; ".join(notes)
        if publisher.exit_code and publisher.exit_code > 0:
            note += f"; publisher exit {publisher.exit_code}: " + (rundir / "pub.err").read_text(errors="replace")[:200]
        if delivered == 0:
            raise ScenarioError(note or "nothing delivered")
        return RunResult(values={
            "rate": delivered / elapsed,
            "broker_cpu_per_msg": None if cpu is None else cpu / delivered,
            "broker_cpu_util": None if cpu is None else cpu / elapsed,
            "client_cpu_util": _client_utilisation(sub_children + [publisher]),
            "client_cpu_total": _clients_total_cpu(sub_children + [publisher], elapsed),
        }, complete=complete and delivered == expected and not failed_subs, note=note)


# --- latency ------------------------------------------------------------------------------------------------

def parse_latency_line(line: str) -> tuple[int, int] | None:
    """(sequence number, latency in ns) from a subscriber line ``<recv s>.<ns> <sent ns> <seq>``; None if not one.

    The receive stamp is mosquitto_sub's ``%U`` (wall clock with nanoseconds, taken in C when the message is
    handled); the send stamp is the publisher feeder's ``time.time_ns()`` just before it writes the line.
    """
    parts = line.split()
    if len(parts) < 3 or "." not in parts[0]:
        return None
    seconds, _, fraction = parts[0].partition(".")
    try:
        received = int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])
        return int(parts[2]), received - int(parts[1])
    except ValueError:
        return None


def _write_within(fd: int, data: bytes, timeout: float) -> None:
    """Write all of ``data`` to a non-blocking pipe, or raise TimeoutError if the reader stalls that long."""
    view = memoryview(data)
    while view:
        _, writable, _ = select.select([], [fd], [], timeout)
        if not writable:
            raise TimeoutError
        view = view[os.write(fd, view):]


class Latency(Scenario):
    """End-to-end latency at a fixed, moderate rate that the broker and clients keep up with easily.

    The publisher is mosquitto_pub -l fed line by line through a pipe by a pacing loop in the harness, which
    stamps each line with the wall clock; mosquitto_sub stamps arrival in C (``-F %U``). So both stamps are
    taken outside the broker by code that is idle most of the time, and the pipe and the two C clients add
    the same few tens of µs for every broker. Both sides use TCP_NODELAY.
    """

    def __init__(self, name: str, *, qos: int) -> None:
        self.name = name
        self.qos = qos
        self.description = f"1 → 1, QoS {qos}, plain TCP, fixed rate"
        self.metrics = (
            Metric("p50", "latency p50", "µs", False, 1e6),
            Metric("p99", "latency p99", "µs", False, 1e6),
            Metric("lost", "messages not received", "", False, integer=True, worst_case=True),
        )

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        mode = "plain"
        topic = f"bench/{self.name}/{uuid.uuid4().hex[:8]}"
        count = settings.latency_messages
        _publish_ready_marker(broker, mode, pki, topic, rundir)
        [(sub, out)] = _start_subscribers(broker, mode, pki, topic=topic, qos=self.qos, count=count,
                                          subscribers=1, rundir=rundir, output_format="%U %p", nodelay=True)
        with open(rundir / "pub.err", "wb") as stderr:
            publisher = Child(clients.publisher_argv(broker.ports[mode], mode, pki, topic=topic, qos=self.qos,
                                                     client_id=f"bench-pub-{uuid.uuid4().hex[:6]}", nodelay=True),
                              name="pub", stdin=subprocess.PIPE, stderr=stderr)
        pipe_fd = publisher.popen.stdin.fileno()
        os.set_blocking(pipe_fd, False)
        interval = 1.0 / settings.latency_rate
        # Give the publisher time to connect before the first stamp (its lines would otherwise queue up).
        time.sleep(0.3)
        started = time.monotonic()
        try:
            for seq in range(count):
                delay = started + seq * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                line = f"{time.time_ns()} {seq}".ljust(settings.payload_size) + "\n"
                _write_within(pipe_fd, line.encode(), STALL_TIMEOUT)
        except BrokenPipeError:
            pass
        except TimeoutError:
            sub.kill()
            _close_input(publisher)
            raise ScenarioError(f"the publisher stopped reading its input for {STALL_TIMEOUT:.0f} s "
                                f"(not connected?): {(rundir / 'pub.err').read_text(errors='replace')[:200]}") from None
        complete = sub.wait(max(1.0, settings.run_timeout - (time.monotonic() - started)))
        if not complete:
            sub.kill()
        _close_input(publisher)
        latencies = {}
        for line in out.read_text(errors="replace").splitlines():
            parsed = parse_latency_line(line)
            if parsed:
                latencies[parsed[0]] = parsed[1] / 1e9
        if not latencies:
            raise ScenarioError("no stamped message arrived")
        values = list(latencies.values())
        lost = count - len(latencies)
        return RunResult(values={"p50": percentile(values, 50), "p99": percentile(values, 99), "lost": lost},
                         complete=complete and lost == 0,
                         note="" if lost == 0 else f"{lost} of {count} messages did not arrive")


# --- TLS connection rate ----------------------------------------------------------------------------------

class ConnectRate(Scenario):
    """New TCP (+ TLS 1.3 handshake) + CONNECT/CONNACK + DISCONNECT, back to back, from K client processes.

    The clients are the small C program ``connect_rate.c`` when it can be built, else ``connector.py``.
    """

    def __init__(self, name: str, *, processes: int, mode: str = "tls") -> None:
        self.name = name
        self.processes = processes
        self.mode = mode
        kind = {"plain": "plain TCP", "tls": "TLS", "mtls": "mutual-TLS"}[mode]
        self.description = f"{kind} connect rate, {processes} client process{'es' if processes > 1 else ''}"
        self.metrics = (
            Metric("rate", "connections/s", "conn/s", True),
            Metric("broker_cpu_per_conn", "broker CPU per connection", "µs", False, 1e6),
            Metric("client_cpu_util", "busiest client's CPU (1.0 = one core)", "", False),
            Metric("client_cpu_total", "all clients' CPU (cores)", "", False),
        )

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        per_process = max(1, settings.connections // self.processes)
        port = broker.ports[self.mode]
        client_note = ""
        try:
            if settings.connect_client == "python" or self.mode == "plain":
                raise native.BuildError("asked for")
            binary = native.connect_client()
            argv = [str(binary), str(port), str(per_process), str(settings.run_timeout), str(pki.ca_cert)]
            if self.mode == "mtls":
                argv += [str(pki.client_cert), str(pki.client_key)]
        except native.BuildError as exc:
            if settings.connect_client == "c":
                raise ScenarioError(f"the C connect client cannot be built: {exc}") from exc
            # The C client speaks TLS only: plain runs always use the Python one.
            plain_or_asked = settings.connect_client == "python" or self.mode == "plain"
            client_note = "" if plain_or_asked else f"Python connect client ({exc})"
            argv = _python_module_argv("bench.connector") + [
                "--port", str(port), "--count", str(per_process), "--deadline", str(settings.run_timeout)]
            if self.mode != "plain":
                argv += ["--cafile", str(pki.ca_cert)]
                if self.mode == "mtls":
                    argv += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        cpu_before = procstat.cpu_seconds(broker.pid)
        children, outputs = [], []
        for index in range(self.processes):
            out = rundir / f"connector{index}.out"
            with open(out, "wb") as stdout, open(rundir / f"connector{index}.err", "wb") as stderr:
                children.append(Child(argv, name=f"connector{index}", stdout=stdout, stderr=stderr))
            outputs.append(out)
        complete = _wait_all(children, time.monotonic() + settings.run_timeout + 15)
        cpu_after = procstat.cpu_seconds(broker.pid)
        if not complete:
            _stop_all(children)
            raise ScenarioError("connect clients did not finish in time")
        reports = []
        for index, out in enumerate(outputs):
            try:
                reports.append(json.loads(out.read_text()))
            except ValueError as exc:
                err = (rundir / f"connector{index}.err").read_text(errors="replace")[-300:]
                raise ScenarioError(f"connect client {index} reported nothing: {err}") from exc
        ok = sum(r["ok"] for r in reports)
        errors = sum(r["errors"] for r in reports)
        if ok == 0:
            raise ScenarioError(f"no connection succeeded: {reports[0]['first_error']}")
        elapsed = max(r["elapsed"] for r in reports)
        notes = [client_note] if client_note else []
        cpu = _cpu_or_none(cpu_after - cpu_before, notes)
        if errors:
            notes.append(f"{errors} failed connections "
                         f"(first: {next(r['first_error'] for r in reports if r['errors'])})")
        note = "; ".join(notes)
        return RunResult(values={
            "rate": ok / elapsed,
            "broker_cpu_per_conn": None if cpu is None else cpu / ok,
            "client_cpu_util": _client_utilisation(children),
            "client_cpu_total": _clients_total_cpu(children, elapsed),
        }, complete=errors == 0 and ok == per_process * self.processes, note=note)


# --- memory per idle connection ------------------------------------------------------------------------------

def _wait_for_ready_line(path: Path, deadline: float, child: Child) -> str | None:
    while time.monotonic() < deadline:
        try:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("ready "):
                    return line
        except FileNotFoundError:
            pass
        if not child.running:
            return None
        time.sleep(0.05)
    return None


class IdleMemory(Scenario):
    """Broker RSS growth per idle MQTT connection (CONNECT done, keep-alive 0), from /proc VmRSS.

    Two client processes hold the connections: 50 warm-up connections, then the measured ones (different
    client ids, so the broker keeps them all).
    """

    SETTLE_SECONDS = 1.0
    WARMUP_CONNECTIONS = 50

    def __init__(self, name: str, *, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.description = f"memory per idle connection, {'plain TCP' if mode == 'plain' else 'TLS 1.3'}"
        self.metrics = (Metric("bytes_per_conn", "RSS per idle connection", "KiB", False, 1 / 1024),
                        Metric("clients_page", "admin API: one page of clients", "ms", False, 1000),
                        Metric("clients_search", "admin API: a client search (full scan)", "ms", False, 1000))

    def _hold(self, broker: RunningBroker, pki: Pki, connections: int, rundir: Path, tag: str,
              timeout: float) -> tuple[Child, object, int]:
        argv = _python_module_argv("bench.holder") + ["--port", str(broker.ports[self.mode]),
                                                      "--connections", str(connections),
                                                      "--hold", str(timeout + 30)]
        if self.mode != "plain":
            argv += ["--cafile", str(pki.ca_cert)]
        out = rundir / f"holder-{tag}.out"
        with open(out, "wb") as stdout, open(rundir / f"holder-{tag}.err", "wb") as stderr:
            holder = Child(argv, name=f"holder-{tag}", stdin=subprocess.PIPE, stdout=stdout, stderr=stderr)
        line = _wait_for_ready_line(out, time.monotonic() + timeout, holder)
        if line is None:
            holder.kill()
            err = (rundir / f"holder-{tag}.err").read_text(errors="replace")[-300:]
            raise ScenarioError(f"idle connections were not all opened in time: {err}")
        _, ok, failed = line.split()
        if int(failed):
            holder.kill()
            err = (rundir / f"holder-{tag}.err").read_text(errors="replace")[-300:]
            raise ScenarioError(f"{failed} of {connections} idle connections failed: {err}")
        return holder, holder.popen.stdin, int(ok)

    def _release(self, holder: Child, stdin) -> None:
        stdin.close()
        if not holder.wait(15.0):
            holder.kill()

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        # A first batch brings the broker's lazily allocated parts (TLS context, buffers, pools) into being. It
        # stays open during the measurement: closed, its freed memory would be reused by the measured
        # connections and make them look cheaper than they are.
        warmup, warmup_stdin, _ = self._hold(broker, pki, self.WARMUP_CONNECTIONS, rundir, "warmup",
                                             settings.run_timeout)
        try:
            time.sleep(self.SETTLE_SECONDS)
            rss_before = procstat.rss_bytes(broker.pid)
            holder, stdin, opened = self._hold(broker, pki, settings.idle_connections, rundir, "main",
                                               settings.run_timeout)
            try:
                time.sleep(self.SETTLE_SECONDS)
                rss_after = procstat.rss_bytes(broker.pid)
                pages = self._time_client_pages(broker, opened + self.WARMUP_CONNECTIONS)
            finally:
                self._release(holder, stdin)
        finally:
            self._release(warmup, warmup_stdin)
        return RunResult(values={"bytes_per_conn": (rss_after - rss_before) / opened, **pages})

    PAGE_REQUESTS = 5

    def _time_client_pages(self, broker: RunningBroker, connected: int) -> dict[str, float]:
        """With every connection still open: the median time of ``GET /api/v5/clients`` for the middle page
        (100 rows), and for a search by client id that matches one client (a scan of them all)."""
        if broker.admin_port is None:
            return {}
        middle = max(1, connected // 200)
        queries = {"clients_page": f"page={middle}&limit=100", "clients_search": "like_clientid=-7777"}
        values = {}
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for key, query in queries.items():
            times = []
            for _ in range(self.PAGE_REQUESTS):
                url = f"http://{net.HOST}:{broker.admin_port}/api/v5/clients?{query}"
                started = time.perf_counter()
                with opener.open(url, timeout=30) as response:
                    body = json.loads(response.read())
                times.append(time.perf_counter() - started)
                # A Wharf before issue #18 ignores page/limit and answers a list of every client.
                count = len(body) if isinstance(body, list) else body["meta"]["count"]
                if key == "clients_page" and count < connected:
                    raise ScenarioError(f"the admin API lists {count} clients, not {connected}")
            values[key] = statistics.median(times)
        return values


# --- many idle connections at once ----------------------------------------------------------------------------

SCALE_STEPS = (1_000, 5_000, 10_000, 19_000)


class Scale(Scenario):
    """1k -> 5k -> 10k -> 19k idle MQTT connections (CONNECTed, keep-alive on, PINGREQ once per keep-alive) to
    one broker process, opened step by step by ``bench.holder`` processes of at most ``PER_HOLDER`` connections
    each, every holder from its own loopback source address (127.0.0.2, .3, ...).

    At each step: broker RSS per connection (the growth since a warm-up batch, over all connections held),
    broker CPU per connect (the step's connections only), idle broker CPU over ``IDLE_SECONDS`` with all of
    them open (in % of a core), and at the last step the round trip of a QoS 0 PUBLISH to a subscriber.
    Processes here may hold 20,000 open files at most, so the largest step leaves the broker room for its own.
    """

    name = "scale"
    PER_HOLDER = 4_000
    KEEPALIVE = 300
    WARMUP_CONNECTIONS = 50
    SETTLE_SECONDS = 1.0
    IDLE_SECONDS = 5.0
    ROUND_TRIPS = 200

    def __init__(self, steps: tuple[int, ...] = SCALE_STEPS) -> None:
        self.steps = steps
        self.description = ("idle connections held by one broker: " + " → ".join(size_label(n) for n in steps)
                            + f" (keep-alive {self.KEEPALIVE} s)")
        self.metrics = self._metrics()

    def _metrics(self) -> tuple[Metric, ...]:
        metrics: list[Metric] = []
        for n in self.steps:
            label = size_label(n)
            metrics += [Metric(f"rss_per_conn_{n}", f"RSS per connection at {label}", "KiB", False, 1 / 1024),
                        Metric(f"cpu_per_connect_{n}", f"CPU per connect, step to {label}", "µs", False, 1e6),
                        Metric(f"idle_cpu_{n}", f"idle CPU at {label}", "% of a core", False, 100)]
        largest = size_label(max(self.steps))
        return tuple(metrics) + (
            Metric("rtt_median", f"publish → subscriber round trip at {largest}, median", "µs", False, 1e6),
            Metric("rtt_p99", f"publish → subscriber round trip at {largest}, p99", "µs", False, 1e6))

    def configure(self, settings: Settings) -> None:
        self.steps = tuple(sorted(set(settings.scale_steps)))
        self.__init__(self.steps)  # type: ignore[misc]

    def _holder(self, broker: RunningBroker, count: int, index: int, rundir: Path,
                timeout: float) -> tuple[Child, object]:
        argv = _python_module_argv("bench.holder") + [
            "--port", str(broker.ports["plain"]), "--connections", str(count), "--keepalive", str(self.KEEPALIVE),
            "--source-address", f"127.0.0.{2 + index}", "--hold", str(timeout + 600)]
        out = rundir / f"holder{index}.out"
        with open(out, "wb") as stdout, open(rundir / f"holder{index}.err", "wb") as stderr:
            holder = Child(argv, name=f"holder{index}", stdin=subprocess.PIPE, stdout=stdout, stderr=stderr)
        return holder, holder.popen.stdin

    def _wait_ready(self, holder: Child, index: int, count: int, deadline: float, rundir: Path) -> None:
        line = _wait_for_ready_line(rundir / f"holder{index}.out", deadline, holder)
        err = ""
        if line is None or line.split()[2] != "0":
            err = (rundir / f"holder{index}.err").read_text(errors="replace")[-300:]
        if line is None:
            raise ScenarioError(f"holder {index} did not open its {count} connections in time: {err}")
        if line.split()[2] != "0":
            raise ScenarioError(f"holder {index}: {line.split()[2]} of {count} connections failed: {err}")

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        deadline = time.monotonic() + settings.run_timeout
        holders: list[tuple[Child, object]] = []
        values: dict[str, float] = {}
        try:
            holders.append(self._holder(broker, self.WARMUP_CONNECTIONS, 0, rundir, settings.run_timeout))
            self._wait_ready(holders[0][0], 0, self.WARMUP_CONNECTIONS, deadline, rundir)
            time.sleep(self.SETTLE_SECONDS)
            rss_base = procstat.rss_bytes(broker.pid)
            held = 0
            for target in self.steps:
                batch = []
                remaining = target - held
                count = -(-remaining // self.PER_HOLDER)
                cpu_before = procstat.cpu_seconds(broker.pid)
                for part in range(count):
                    size = remaining // count + (1 if part < remaining % count else 0)
                    index = len(holders)
                    holders.append(self._holder(broker, size, index, rundir, settings.run_timeout))
                    batch.append((index, size))
                for index, size in batch:
                    self._wait_ready(holders[index][0], index, size, deadline, rundir)
                cpu_after = procstat.cpu_seconds(broker.pid)
                values[f"cpu_per_connect_{target}"] = (cpu_after - cpu_before) / remaining
                held = target
                time.sleep(self.SETTLE_SECONDS)
                values[f"rss_per_conn_{target}"] = (procstat.rss_bytes(broker.pid) - rss_base) / held
                idle_before = procstat.cpu_seconds(broker.pid)
                time.sleep(self.IDLE_SECONDS)
                values[f"idle_cpu_{target}"] = (procstat.cpu_seconds(broker.pid) - idle_before) / self.IDLE_SECONDS
            values.update(self._round_trips(broker, settings.run_timeout))
        except ScenarioError as exc:
            return RunResult(values, complete=False, note=str(exc))
        finally:
            for _, stdin in holders:
                stdin.close()  # type: ignore[attr-defined]
            for holder, _ in holders:
                if not holder.wait(15.0):
                    holder.kill()
        return RunResult(values)

    def _round_trips(self, broker: RunningBroker, timeout: float) -> dict[str, float]:
        """A subscriber and a publisher beside all the idle connections: QoS 0 PUBLISH -> delivery, one at a time."""
        port = broker.ports["plain"]
        subscriber = retained_load.connect(port, "bench-scale-sub", timeout)
        publisher = retained_load.connect(port, "bench-scale-pub", timeout)
        try:
            subscriber.sendall(retained_load.subscribe_packet(1, "bench/scale/rtt"))
            suback = retained_load.read_exactly(subscriber, 5)
            if suback[0] != 0x90:
                raise ScenarioError(f"expected SUBACK, got {suback!r}")
            publish = retained_load.publish_packet("bench/scale/rtt", b"x" * 16, retain=False)
            times = []
            for _ in range(self.ROUND_TRIPS):
                started = time.perf_counter()
                publisher.sendall(publish)
                if retained_load.read_exactly(subscriber, len(publish)) != publish:
                    raise ScenarioError("the subscriber received something else than the PUBLISH")
                times.append(time.perf_counter() - started)
        finally:
            subscriber.close()
            publisher.close()
        return {"rtt_median": statistics.median(times), "rtt_p99": percentile(times, 99)}


# --- SUBSCRIBE cost beside a large retained store ------------------------------------------------------------

def size_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size >= 1_000 and size % 1_000 == 0:
        return f"{size // 1_000}k"
    return str(size)


class RetainedSubscribe(Scenario):
    """Time per wildcard SUBSCRIBE that matches nothing, at each of ``--retained-sizes`` retained messages.

    One broker run: measure at the first size, retain more messages up to the next size, measure again, and so
    on (``bench/retained_load.py``). A store that is scanned per SUBSCRIBE shows a cost growing with the size;
    an index keeps it flat. At the largest size, one client then subscribes to ``r/#`` (all of them) while
    another pings: the time until all arrived, and the slowest PING meanwhile (how long others wait). Loading
    is bounded by the run timeout: a size not reached is left out and the run is marked incomplete.
    """

    name = "retained"
    description = "SUBSCRIBE (unmatched q/<n>/#) beside N retained messages on r/<k>/<i>"

    def __init__(self) -> None:
        self.sizes: tuple[int, ...] = Settings.retained_sizes
        self.metrics = self._metrics()

    def _metrics(self) -> tuple[Metric, ...]:
        largest = size_label(max(self.sizes))
        return tuple(Metric(f"subscribe_{size}", f"SUBSCRIBE at {size_label(size)} retained", "ms", False, 1000)
                     for size in self.sizes) + (
            Metric("full_match", f"SUBSCRIBE r/# until all {largest} retained arrived", "ms", False, 1000),
            Metric("ping_max", f"slowest PING of another client meanwhile ({largest})", "ms", False, 1000))

    def configure(self, settings: Settings) -> None:
        self.sizes = tuple(sorted(set(settings.retained_sizes)))
        self.metrics = self._metrics()

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        deadline = time.monotonic() + settings.run_timeout
        timeout = max(settings.run_timeout, 5.0)
        values: dict[str, float] = {}
        loaded = 0
        loader = retained_load.connect(broker.ports["plain"], "bench-retained-loader", timeout)
        try:
            for step, size in enumerate(self.sizes):
                if size > loaded:
                    loaded += retained_load.load(loader, loaded, size, deadline)
                    if loaded < size:
                        return RunResult(values, complete=False,
                                         note=f"only {loaded} of {size} retained messages stored in time")
                # A connection per size: the filters stay within Wharf's default 1000 subscriptions per client.
                timer = retained_load.connect(broker.ports["plain"], f"bench-retained-timer-{step}", timeout)
                try:
                    count = settings.retained_subscribes
                    values[f"subscribe_{size}"] = retained_load.time_subscribes(timer, count, step * count)
                finally:
                    timer.close()
            if loaded:
                elapsed, slowest, complete = retained_load.full_match(broker.ports["plain"], loaded,
                                                                      max(deadline - time.monotonic(), 5.0))
                if not complete:
                    return RunResult(values, complete=False,
                                     note=f"r/# did not deliver all {loaded} retained messages in time")
                values.update(full_match=elapsed, ping_max=slowest)
        finally:
            loader.close()
        return RunResult(values)


# --- certificate rotation under load ------------------------------------------------------------------------

def served_fingerprint(port: int, ctx: ssl.SSLContext) -> str:
    """Fingerprint of the certificate a new connection is served (after a full MQTT CONNECT/CONNACK)."""
    with socket.create_connection((net.HOST, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=net.HOST) as tls:
        der = tls.getpeercert(binary_form=True)
        tls.sendall(mqtt_wire.connect_packet(f"bench-probe-{uuid.uuid4().hex[:8]}"))
        data = b""
        while len(data) < mqtt_wire.CONNACK_LENGTH:
            chunk = tls.recv(mqtt_wire.CONNACK_LENGTH - len(data))
            if not chunk:
                raise ConnectionError("closed before CONNACK")
            data += chunk
        mqtt_wire.check_connack(data)
        tls.sendall(mqtt_wire.DISCONNECT)
    return fingerprint_of_der(der)


class Rotation(Scenario):
    """TLS clients publish QoS 1 while the server certificate is replaced and the broker told to reload.

    Each rotation writes a new key and certificate (same CA) over the files, then uses the broker's reload
    methods in turn (Wharf: SIGHUP, then the admin API; mosquitto: SIGHUP), and probes with new connections
    every 20 ms until one is served the new certificate.
    """

    needs_own_pki = True
    PROBE_INTERVAL = 0.02
    PROBE_TIMEOUT = 5.0

    def __init__(self, name: str) -> None:
        self.name = name
        self.description = "certificate rotation under QoS 1 TLS load"
        self.metrics = (
            Metric("dropped", "dropped connections", "", False, integer=True, worst_case=True),
            Metric("lost", "lost QoS 1 messages", "", False, integer=True, worst_case=True),
            Metric("new_cert_median", "new cert served after (median)", "ms", False, 1e3),
            Metric("new_cert_max", "new cert served after (max)", "ms", False, 1e3),
            Metric("unseen", "rotations never served", "", False, integer=True, worst_case=True),
        )

    def unsupported_reason(self, broker: Broker) -> str | None:
        return None if broker.can_reload_certificates else "has no way to reload certificates"

    def run(self, broker: RunningBroker, pki: Pki, settings: Settings, rundir: Path) -> RunResult:
        duration = settings.rotations * settings.rotation_interval + 1.0
        out = rundir / "load.out"
        with open(out, "wb") as stdout, open(rundir / "load.err", "wb") as stderr:
            load = Child(_python_module_argv("bench.rotation_load") + [
                "--port", str(broker.ports["tls"]), "--cafile", str(pki.ca_cert),
                "--publishers", str(settings.rotation_publishers), "--rate", str(settings.rotation_rate),
                "--duration", str(duration), "--topic", f"bench/rotation/{uuid.uuid4().hex[:8]}"],
                name="rotation-load", stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "ready" not in out.read_text(errors="replace"):
            if not load.running:
                break
            time.sleep(0.05)
        if "ready" not in out.read_text(errors="replace"):
            load.kill()
            output = out.read_text(errors="replace") + (rundir / "load.err").read_text(errors="replace")
            raise ScenarioError("rotation load did not connect: " + output[-400:])
        ctx = net.client_tls_context(pki, mutual=False)
        methods = list(broker.reloaders.items())
        seen_after: list[float] = []
        unseen = 0
        reload_errors: list[str] = []
        for index in range(settings.rotations):
            time.sleep(settings.rotation_interval / 2)
            fingerprint = rotate_server_certificate(pki)
            method_name, reload = methods[index % len(methods)]
            reloaded_at = time.monotonic()
            # The admin API call blocks until the broker swapped; run it beside the probes, as a client would.
            caller = threading.Thread(target=self._call_reload, args=(reload, fingerprint, reload_errors, method_name),
                                      daemon=True)
            caller.start()
            seen = None
            while time.monotonic() - reloaded_at < self.PROBE_TIMEOUT:
                try:
                    if served_fingerprint(broker.ports["tls"], ctx) == fingerprint:
                        seen = time.monotonic() - reloaded_at
                        break
                except (OSError, mqtt_wire.ProtocolError):
                    pass
                time.sleep(self.PROBE_INTERVAL)
            caller.join(15)
            if seen is None:
                unseen += 1
            else:
                seen_after.append(seen)
            remaining = settings.rotation_interval / 2 - (time.monotonic() - reloaded_at)
            if remaining > 0:
                time.sleep(remaining)
        if not load.wait(duration + 60):
            load.kill()
            raise ScenarioError("rotation load did not finish")
        report = None
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                report = json.loads(line)
        if not report or "error" in report:
            raise ScenarioError(f"rotation load failed: {report or (rundir / 'load.err').read_text()[-400:]}")
        notes = [f"{report['published']} published, {report['acked']} acked, {report['received']} received"]
        if reload_errors:
            notes.append("reload errors: " + "; ".join(reload_errors[:3]))
        return RunResult(values={
            "dropped": report["disconnects"] + report["connect_failures"],
            "lost": report["lost"],
            "new_cert_median": statistics.median(seen_after) if seen_after else None,
            "new_cert_max": max(seen_after) if seen_after and not unseen else None,
            "unseen": unseen,
        }, complete=unseen == 0 and not reload_errors, note="; ".join(notes))

    @staticmethod
    def _call_reload(reload, fingerprint: str, errors: list[str], method_name: str) -> None:
        try:
            reload(fingerprint)
        except Exception as exc:  # noqa: BLE001 - any failure of the reload call is reported, not raised
            errors.append(f"{method_name}: {type(exc).__name__}: {exc}")


def all_scenarios() -> list[Scenario]:
    """Every scenario, in the order they run and print."""
    return [
        Throughput("qos0", mode="plain", qos=0),
        Throughput("qos1", mode="plain", qos=1),
        Throughput("tls-qos0", mode="tls", qos=0),
        Throughput("tls-qos1", mode="tls", qos=1),
        Throughput("mtls-qos0", mode="mtls", qos=0),
        Throughput("mtls-qos1", mode="mtls", qos=1),
        Throughput("fanout", mode="plain", qos=0, subscribers=10),
        Latency("latency-qos0", qos=0),
        Latency("latency-qos1", qos=1),
        ConnectRate("connect-tls-1", processes=1),
        ConnectRate("connect-tls-4", processes=4),
        ConnectRate("connect-plain-4", processes=4, mode="plain"),
        IdleMemory("memory-plain", mode="plain"),
        IdleMemory("memory-tls", mode="tls"),
        Rotation("rotation"),
        RetainedSubscribe(),
        Scale(),
    ]
