"""Command lines for the C load generators, ``mosquitto_pub`` and ``mosquitto_sub``.

The publisher reads one message per line from its standard input (``-l``), fed from a file of N lines, so
it spends its time sending, not parsing arguments; the subscriber exits after ``-C`` messages, so its exit
time is the moment the last message arrived.
"""

from __future__ import annotations

from pathlib import Path

from bench.net import HOST
from bench.pki import Pki

READY_MARKER = b"READY"


def tls_arguments(mode: str, pki: Pki) -> list[str]:
    """Client TLS flags for a listener mode: plain, tls (one-way) or mtls (mutual). Always TLS 1.3."""
    if mode == "plain":
        return []
    if mode not in ("tls", "mtls"):
        raise ValueError(f"unknown listener mode {mode!r}")
    args = ["--cafile", str(pki.ca_cert), "--tls-version", "tlsv1.3"]
    if mode == "mtls":
        args += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    return args


def subscriber_argv(port: int, mode: str, pki: Pki, *, topic: str, qos: int, count: int, client_id: str,
                    output_format: str | None = None, nodelay: bool = False) -> list[str]:
    argv = ["mosquitto_sub", "-h", HOST, "-p", str(port), "-t", topic, "-q", str(qos), "-C", str(count),
            "-i", client_id, "-k", "60"]
    if output_format:
        argv += ["-F", output_format]
    if nodelay:
        argv.append("--nodelay")
    return argv + tls_arguments(mode, pki)


def publisher_argv(port: int, mode: str, pki: Pki, *, topic: str, qos: int, client_id: str,
                   nodelay: bool = False) -> list[str]:
    """A publisher sending one message per line of its standard input."""
    argv = ["mosquitto_pub", "-h", HOST, "-p", str(port), "-t", topic, "-q", str(qos), "-l", "-i", client_id]
    if nodelay:
        argv.append("--nodelay")
    return argv + tls_arguments(mode, pki)


def retained_marker_argv(port: int, mode: str, pki: Pki, *, topic: str) -> list[str]:
    """Publishes the retained READY marker: each subscriber gets it right after its SUBACK, and only then."""
    return (["mosquitto_pub", "-h", HOST, "-p", str(port), "-t", topic, "-q", "1", "-r", "-m",
             READY_MARKER.decode(), "-i", f"bench-marker-{topic.replace('/', '-')}"[:60]]
            + tls_arguments(mode, pki))


def write_payload_file(path: Path, messages: int, payload_size: int) -> Path:
    """N lines of ``payload_size`` bytes each (the newline is not part of the payload)."""
    if payload_size < 1:
        raise ValueError("payload size must be at least 1 byte")
    line = b"x" * payload_size + b"\n"
    with open(path, "wb") as f:
        remaining = messages
        block = line * 4096
        while remaining >= 4096:
            f.write(block)
            remaining -= 4096
        f.write(line * remaining)
    return path


def count_received(output_size: int, payload_size: int, markers: int = 1) -> int:
    """Messages in a subscriber's output file: ``markers`` READY lines, then one line per payload."""
    body = output_size - markers * (len(READY_MARKER) + 1)
    if body <= 0:
        return 0
    return body // (payload_size + 1)


def count_markers(path: Path) -> int:
    """READY lines a subscriber printed (a broker may deliver the retained marker more than once)."""
    with open(path, "rb") as f:
        return f.read().count(READY_MARKER + b"\n")
