"""``python -m bench.tls_floor``: a real process, real TLS 1.3 handshakes, the CONNECT/CONNACK/DISCONNECT cycle."""

import socket
import ssl
import subprocess
import sys
import time

import pytest

from bench import net
from bench.brokers import REPO_ROOT
from bench.pki import create_pki


@pytest.fixture
def floor(tmp_path, request):
    mutual = request.param
    pki = create_pki(tmp_path / "pki")
    port = net.free_port()
    argv = [sys.executable, "-m", "bench.tls_floor", "--port", str(port), "--cert", str(pki.server_cert),
            "--key", str(pki.server_key)]
    if mutual:
        argv += ["--cafile", str(pki.ca_cert)]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE)
    try:
        net.wait_for_port(port, time.monotonic() + 20, alive=lambda: process.poll() is None)
        yield pki, port, mutual
    finally:
        process.terminate()
        process.wait(timeout=10)


def _cycle(context: ssl.SSLContext, port: int) -> tuple[bytes, bytes]:
    with socket.create_connection((net.HOST, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x00\x00\x04test")
        connack = tls.recv(4)
        tls.sendall(b"\xe0\x00")
        return connack, tls.recv(1)  # the server closes after DISCONNECT


@pytest.mark.parametrize("floor", [False, True], indirect=True, ids=["one-way", "mutual"])
def test_answers_connect_and_closes_on_disconnect(floor):
    pki, port, mutual = floor
    for _ in range(3):
        connack, after = _cycle(net.client_tls_context(pki, mutual=mutual), port)
        assert connack == b"\x20\x02\x00\x00"
        assert after == b""


@pytest.mark.parametrize("floor", [True], indirect=True, ids=["mutual"])
def test_mutual_floor_refuses_a_client_without_certificate(floor):
    pki, port, _ = floor
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _cycle(net.client_tls_context(pki, mutual=False), port)
