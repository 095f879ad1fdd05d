"""Pre-authentication CPU attacks (security issue #14, items 6 and 7) against a real broker, measured.

``python -m bench.attacks`` starts ``python -m wharf_broker`` from this checkout on 127.0.0.1 (port 0) and runs,
each for ``--seconds`` (6 s by default; the whole run stays under a minute):

- ``connect-props``: 2 senders each loop over new connections sending a ~1 MB MQTT 5.0 CONNECT that carries
  200,000 empty user properties;
- ``publish-props``: 2 senders connect normally, then send ~1 MB PUBLISHes (QoS 0) with 200,000 empty user
  properties each;
- ``pbkdf2``: 16 attacker connections (from 127.0.0.2) loop CONNECTs of a known user with a wrong password
  (600,000-iteration PBKDF2 hash, the production default) while a legitimate user logs in (from 127.0.0.1)
  every 0.5 s, each time as a different user so no verification cache helps.

Meanwhile a probe client on 127.0.0.1 sends a PINGREQ every 20 ms and records the round trip; the largest
round trip approximates the longest event-loop stall. A QoS 1 publisher/subscriber pair runs the whole
time and reports what it lost. Prints one line per scenario; ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENER = re.compile(r"listener tcp:default on 127\.0\.0\.1:(\d+)")
READY = re.compile(r"broker \S+ ready")
USER_PROPS = 200_000
ATTACKERS = 16
LEGIT_USERS = 40


# -------------------------------------------------------------------------------------------- wire helpers

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(client_id: str, version: int = 5, props: bytes = b"", username: str | None = None,
                   password: str | None = None, keepalive: int = 60) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _str("MQTT") + bytes((version, flags)) + keepalive.to_bytes(2, "big")
    if version == 5:
        body += _varint(len(props)) + props
    body += _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _str(password)
    return _packet(0x10, body)


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, props: bytes = b"",
                   version: int = 5) -> bytes:
    body = _str(topic) + (packet_id.to_bytes(2, "big") if qos else b"")
    if version == 5:
        body += _varint(len(props)) + props
    return _packet(0x30 | (qos << 1), body + payload)


EMPTY_USER_PROPS = b"\x26\x00\x00\x00\x00" * USER_PROPS


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    return first, await reader.readexactly(length)


async def open_client(port: int, client_id: str, username: str | None = None, password: str | None = None,
                      local: str | None = None, version: int = 5):
    """A connected client: (reader, writer, CONNACK reason code)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(local, 0) if local else None)
    writer.write(connect_packet(client_id, version, username=username, password=password))
    first, body = await read_packet(reader)
    return reader, writer, body[1]


# ------------------------------------------------------------------------------------------------ clients

class Probe:
    """PINGREQ every ``interval``; ``samples`` are round trips in seconds."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        self.port, self.interval, self.samples = port, interval, []

    async def run(self, stop: asyncio.Event) -> None:
        reader, writer, _ = await open_client(self.port, "probe")
        while not stop.is_set():
            start = time.perf_counter()
            writer.write(b"\xc0\x00")
            await read_packet(reader)
            self.samples.append(time.perf_counter() - start)
            await asyncio.sleep(self.interval)
        writer.close()

    def summary(self) -> dict:
        samples = self.samples or [0.0]
        return {"pings": len(self.samples), "ping_max_ms": round(max(samples) * 1000, 1),
                "ping_p50_ms": round(statistics.median(samples) * 1000, 1)}


class Qos1Pair:
    """A QoS 1 publisher and subscriber on one topic; ``lost`` = sent and acknowledged but never received."""

    def __init__(self, port: int, topic: str) -> None:
        self.port, self.topic = port, topic
        self.acked: set[int] = set()
        self.received: set[int] = set()

    async def run(self, stop: asyncio.Event) -> None:
        s_reader, s_writer, _ = await open_client(self.port, f"sub-{self.topic}", version=4)
        s_writer.write(_packet(0x82, (1).to_bytes(2, "big") + _str(self.topic) + b"\x01"))
        await read_packet(s_reader)
        p_reader, p_writer, _ = await open_client(self.port, f"pub-{self.topic}", version=4)
        receiver = asyncio.get_running_loop().create_task(self._receive(s_reader, s_writer))
        number = 0
        while not stop.is_set():
            number += 1
            packet_id = number % 65535 + 1
            p_writer.write(publish_packet(self.topic, str(number).encode(), 1, packet_id, version=4))
            first, body = await read_packet(p_reader)
            if first >> 4 == 4:
                self.acked.add(number)
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # let the last deliveries arrive
        receiver.cancel()
        p_writer.close()
        s_writer.close()

    async def _receive(self, reader, writer) -> None:
        while True:
            first, body = await read_packet(reader)
            if first >> 4 != 3:
                continue
            topic_len = int.from_bytes(body[:2], "big")
            packet_id = body[2 + topic_len:4 + topic_len]
            self.received.add(int(body[4 + topic_len:]))
            writer.write(b"\x40\x02" + packet_id)

    def summary(self) -> dict:
        return {"qos1_sent": len(self.acked), "qos1_lost": len(self.acked - self.received)}


# ------------------------------------------------------------------------------------------------ attacks

async def connect_props_sender(port: int, stop: asyncio.Event, counts: dict) -> None:
    packet = connect_packet("", props=EMPTY_USER_PROPS)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(packet)
            await writer.drain()
            counts["sent"] += 1
            try:
                await asyncio.wait_for(reader.read(64), 5)
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError):
            counts["errors"] += 1
            await asyncio.sleep(0.05)


async def publish_props_sender(port: int, stop: asyncio.Event, counts: dict, index: int) -> None:
    packet = publish_packet("attack/props", b"x", props=EMPTY_USER_PROPS)
    while not stop.is_set():
        try:
            reader, writer, code = await open_client(port, f"props-{index}")
            if code:
                counts["refused"] += 1
                writer.close()
                await asyncio.sleep(0.2)
                continue
            while not stop.is_set() and not reader.at_eof():
                writer.write(packet)
                await writer.drain()
                counts["sent"] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            counts["errors"] += 1
            await asyncio.sleep(0.05)


async def wrong_password_sender(port: int, stop: asyncio.Event, counts: dict, index: int) -> None:
    while not stop.is_set():
        try:
            started = time.perf_counter()
            reader, writer, code = await asyncio.wait_for(
                open_client(port, f"attacker-{index}", "victim", "wrong", local="127.0.0.2"), 30)
            counts["refused"] += 1
            counts["answer_s"].append(time.perf_counter() - started)
            writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            counts["errors"] += 1
            await asyncio.sleep(0.05)


async def legitimate_logins(port: int, stop: asyncio.Event, latencies: list, failures: list) -> None:
    number = 0
    while not stop.is_set() and number < LEGIT_USERS - 1:
        started = time.perf_counter()
        try:
            reader, writer, code = await asyncio.wait_for(
                open_client(port, f"legit-{number}", f"user{number}", "correct"), 30)
            writer.close()
            (failures.append(code) if code else latencies.append(time.perf_counter() - started))
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
            failures.append(repr(error))
        number += 1
        await asyncio.sleep(0.5)


async def run_scenario(name: str, port: int, seconds: float) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    probe = Probe(port)
    pair = Qos1Pair(port, f"well-behaved/{name}")
    tasks = [loop.create_task(probe.run(stop)), loop.create_task(pair.run(stop))]
    counts: dict = {"sent": 0, "errors": 0, "refused": 0, "answer_s": []}
    latencies: list = []
    failures: list = []
    await asyncio.sleep(0.3)
    idle_login = None
    if name == "pbkdf2":  # one login before the attack, for comparison
        started = time.perf_counter()
        _, writer, code = await open_client(port, "legit-idle", f"user{LEGIT_USERS - 1}", "correct")
        writer.close()
        idle_login = None if code else round((time.perf_counter() - started) * 1000, 1)
    if name == "connect-props":
        tasks += [loop.create_task(connect_props_sender(port, stop, counts)) for _ in range(2)]
    elif name == "publish-props":
        tasks += [loop.create_task(publish_props_sender(port, stop, counts, i)) for i in range(2)]
    else:
        tasks += [loop.create_task(wrong_password_sender(port, stop, counts, i)) for i in range(ATTACKERS)]
        tasks.append(loop.create_task(legitimate_logins(port, stop, latencies, failures)))
    await asyncio.sleep(seconds)
    stop.set()
    done, pending = await asyncio.wait(tasks, timeout=35)
    for task in pending:
        task.cancel()
    result = {"scenario": name, **probe.summary(), **pair.summary(), "attack_packets": counts["sent"],
              "attack_errors": counts["errors"]}
    if name == "pbkdf2":
        answers = counts["answer_s"] or [0.0]
        result.update({"attacker_refusals": counts["refused"],
                       "attacker_answer_p50_ms": round(statistics.median(answers) * 1000, 1),
                       "legit_login_before_attack_ms": idle_login, "legit_logins": len(latencies),
                       "legit_failures": failures[:5],
                       "legit_login_max_ms": round(max(latencies or [0]) * 1000, 1),
                       "legit_login_p50_ms": round(statistics.median(latencies or [0]) * 1000, 1)})
    return result


# ------------------------------------------------------------------------------------------------ broker

def start_broker(workdir: Path, extra_config: str) -> tuple[subprocess.Popen, int, Path]:
    from wharf_broker.authn import hashing

    users = workdir / "users.txt"
    lines = [f"victim:{hashing.hash_password(b'secret')}"]
    # One hash computed, reused with a known salt for every legitimate user: same cost per check.
    salt = os.urandom(16)
    encoded = hashing.hash_password(b"correct", salt=salt)
    lines += [f"user{n}:{encoded}" for n in range(LEGIT_USERS)]
    users.write_text("\n".join(lines) + "\n")
    config = workdir / "wharf.conf"
    config.write_text(f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.enable = false
log.level = info
authentication {{
  allow_anonymous = true
  password_file {{ enable = true, path = "{users}" }}
}}
{extra_config}
""")
    log_path = workdir / "broker.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "wharf_broker", "--config", str(config)],
                                 stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = LISTENER.search(text)
        if match and READY.search(text):
            return proc, int(match.group(1)), log_path
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"broker did not start:\n{log_path.read_text(errors='replace')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each scenario (max 15)")
    parser.add_argument("--scenarios", default="connect-props,publish-props,pbkdf2")
    parser.add_argument("--config", default="", help="extra HOCON appended to the broker's config")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 15.0)
    results = []
    with tempfile.TemporaryDirectory(prefix="wharf-attacks-") as tmp:
        proc, port, log_path = start_broker(Path(tmp), args.config)
        try:
            for name in args.scenarios.split(","):
                result = asyncio.run(run_scenario(name, port, seconds))
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
