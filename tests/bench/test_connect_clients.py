"""The connect-rate clients (C and Python) against a small real TLS 1.3 server that answers CONNECT."""

import json
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from bench import native, net
from bench.brokers import REPO_ROOT
from bench.pki import create_pki


def _mqtt_tls_server(pki, connections: int, *, mutual: bool):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki.ca_cert))
    listener = socket.create_server((net.HOST, 0))
    listener.settimeout(30)
    seen = {"connects": 0, "disconnects": 0, "client_certs": 0, "handshake_errors": []}

    def serve():
        try:
            for _ in range(connections):
                conn, _ = listener.accept()
                try:
                    tls = ctx.wrap_socket(conn, server_side=True)
                except ssl.SSLError as exc:
                    seen["handshake_errors"].append(exc)
                    conn.close()
                    continue
                with tls:
                    if tls.getpeercert():
                        seen["client_certs"] += 1
                    header = tls.recv(2)
                    assert header[0] == 0x10
                    body = b""
                    while len(body) < header[1]:
                        body += tls.recv(header[1] - len(body))
                    assert body[2:6] == b"MQTT"
                    seen["connects"] += 1
                    tls.sendall(b"\x20\x02\x00\x00")
                    if tls.recv(2) == b"\xe0\x00":
                        seen["disconnects"] += 1
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, seen


def _c_client():
    try:
        return native.connect_client()
    except native.BuildError as exc:
        pytest.skip(f"C connect client cannot be built here: {exc}")


@pytest.mark.parametrize("mutual", [False, True])
def test_c_client_makes_full_mqtt_connections(tmp_path, mutual):
    binary = _c_client()
    pki = create_pki(tmp_path / "pki")
    port, thread, seen = _mqtt_tls_server(pki, 3, mutual=mutual)
    argv = [str(binary), str(port), "3", "30", str(pki.ca_cert)]
    if mutual:
        argv += [str(pki.client_cert), str(pki.client_key)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    thread.join(30)
    report = json.loads(result.stdout)
    assert (report["ok"], report["errors"]) == (3, 0), report
    assert seen["connects"] == 3 and seen["disconnects"] == 3
    assert seen["client_certs"] == (3 if mutual else 0)


def test_c_client_refuses_a_server_it_does_not_trust(tmp_path):
    binary = _c_client()
    served, other = create_pki(tmp_path / "served"), create_pki(tmp_path / "other")
    port, thread, seen = _mqtt_tls_server(served, 1, mutual=False)
    result = subprocess.run([str(binary), str(port), "1", "30", str(other.ca_cert)], capture_output=True,
                            text=True, timeout=60, check=False)
    thread.join(30)
    report = json.loads(result.stdout)
    assert (report["ok"], report["errors"]) == (0, 1)
    assert "handshake" in report["first_error"]
    assert seen["connects"] == 0 and len(seen["handshake_errors"]) == 1


def test_python_client_makes_full_mqtt_connections(tmp_path):
    pki = create_pki(tmp_path / "pki")
    port, thread, seen = _mqtt_tls_server(pki, 2, mutual=True)
    result = subprocess.run([sys.executable, "-m", "bench.connector", "--port", str(port), "--count", "2",
                             "--deadline", "30", "--cafile", str(pki.ca_cert), "--cert", str(pki.client_cert),
                             "--key", str(pki.client_key)],
                            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    thread.join(30)
    assert json.loads(result.stdout)["ok"] == 2, result.stderr
    assert seen["connects"] == 2 and seen["client_certs"] == 2


def test_the_build_is_cached_by_source_hash():
    first = _c_client()
    assert native.connect_client() == first
    assert first.name.startswith("connect_rate-")


def test_holder_connects_from_the_given_source_addresses_and_pings_at_its_keepalive():
    """``bench.holder`` against a small plain server that answers CONNECT and PINGREQ and records what it saw."""
    listener = socket.create_server((net.HOST, 0))
    listener.settimeout(30)
    seen: dict = {"sources": [], "keepalives": [], "pings": 0}
    lock = threading.Lock()

    def client(conn: socket.socket) -> None:
        with conn:
            header = conn.recv(2)
            body = b""
            while len(body) < header[1]:
                body += conn.recv(header[1] - len(body))
            with lock:
                seen["keepalives"].append(int.from_bytes(body[8:10], "big"))
            conn.sendall(b"\x20\x02\x00\x00")
            while conn.recv(2) == b"\xc0\x00":
                with lock:
                    seen["pings"] += 1
                conn.sendall(b"\xd0\x00")

    def serve() -> None:
        with listener:
            for _ in range(4):
                conn, address = listener.accept()
                seen["sources"].append(address[0])
                threading.Thread(target=client, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    holder = subprocess.Popen([sys.executable, "-m", "bench.holder", "--port", str(listener.getsockname()[1]),
                               "--connections", "4", "--keepalive", "1", "--source-address", "127.0.0.2",
                               "--source-address", "127.0.0.3", "--hold", "30"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert holder.stdout.readline().split() == ["ready", "4", "0"]
        deadline = time.monotonic() + 10
        while seen["pings"] < 8 and time.monotonic() < deadline:  # two rounds of one PINGREQ per connection
            time.sleep(0.05)
    finally:
        holder.stdin.close()
        holder.wait(15)
    assert sorted(seen["sources"]) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]
    assert seen["keepalives"] == [1, 1, 1, 1]
    assert seen["pings"] >= 8
