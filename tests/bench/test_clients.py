from pathlib import Path

import pytest

from bench import clients
from bench.pki import Pki
from bench.scenarios import parse_latency_line

PKI = Pki(Path("/p"), Path("/p/ca.pem"), Path("/p/ca.key"), Path("/p/server.pem"), Path("/p/server.key"),
          Path("/p/client.pem"), Path("/p/client.key"))


def test_tls_arguments_per_listener_mode():
    assert clients.tls_arguments("plain", PKI) == []
    assert clients.tls_arguments("tls", PKI) == ["--cafile", "/p/ca.pem", "--tls-version", "tlsv1.3"]
    assert clients.tls_arguments("mtls", PKI)[-4:] == ["--cert", "/p/client.pem", "--key", "/p/client.key"]
    with pytest.raises(ValueError):
        clients.tls_arguments("quic", PKI)


def test_publisher_reads_lines_and_subscriber_counts():
    pub = clients.publisher_argv(1234, "plain", PKI, topic="t/x", qos=1, client_id="p")
    assert pub[:7] == ["mosquitto_pub", "-h", "127.0.0.1", "-p", "1234", "-t", "t/x"] and "-l" in pub
    sub = clients.subscriber_argv(1234, "tls", PKI, topic="t/x", qos=0, count=11, client_id="s")
    assert sub[sub.index("-C") + 1] == "11" and "--cafile" in sub


def test_payload_file_has_one_line_per_message(tmp_path):
    path = clients.write_payload_file(tmp_path / "p.txt", 5000, 64)
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 5001 and lines[-1] == b""
    assert {len(line) for line in lines[:-1]} == {64}


def test_received_count_from_output_size():
    marker = len(clients.READY_MARKER) + 1
    assert clients.count_received(marker + 3 * 65, 64) == 3
    assert clients.count_received(marker, 64) == 0
    assert clients.count_received(0, 64) == 0
    assert clients.count_received(2 * marker + 3 * 65, 64, markers=2) == 3


def test_markers_are_counted_in_the_output(tmp_path):
    out = tmp_path / "sub.out"
    out.write_bytes(b"READY\nREADY\n" + b"x" * 64 + b"\n")
    assert clients.count_markers(out) == 2


def test_latency_lines_from_the_subscriber_format():
    assert parse_latency_line("1795727396.000500000 1795727396000000000 17   ") == (17, 500_000)
    # %U prints nanoseconds; a shorter fraction is still read as a decimal fraction
    assert parse_latency_line("10.5 9500000000 3") == (3, 1_000_000_000)
    assert parse_latency_line("READY") is None
    assert parse_latency_line("12.3 notanumber 1") is None
