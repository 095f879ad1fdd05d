"""The admin API against a real broker process: auth, every endpoint of the contract, no key material."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

TOKEN = "admin-test-token-0123456789"
KEY_PASSWORD = "not-really-needed-but-secret"

try:
    from wharf_broker.tls import TlsListenerRuntime  # noqa: F401
    HAVE_TLS = True
except ImportError:
    HAVE_TLS = False
requires_tls = pytest.mark.skipif(not HAVE_TLS, reason="wharf_broker.tls is not available")


def tls_config(cert_dir: Path, token: str | None = TOKEN, extra: str = "") -> str:
    token_line = f'dashboard.token = "{token}"' if token else ""
    return f"""
listeners.tcp.default {{ bind = "127.0.0.1:0", max_connections = 100 }}
listeners.tcp.spare {{ bind = "127.0.0.1:0", enable = false }}
listeners.ssl.default {{
  bind = "127.0.0.1:0"
  ssl_options {{
    certfile = "{cert_dir}/server.crt"
    keyfile = "{cert_dir}/server.key"
    cacertfile = "{cert_dir}/rootCA.crt"
    verify = verify_peer
    password = "{KEY_PASSWORD}"
  }}
}}
dashboard.listeners.http.bind = "127.0.0.1:0"
{token_line}
{extra}
"""


@pytest.fixture
def pki(tmp_path):
    """A fresh CA and server certificate (key encrypted) in a directory of their own, which a test may overwrite."""
    from wharf_broker.tls.devpki import CertificateAuthority

    target = tmp_path / "certs"
    target.mkdir()
    root = CertificateAuthority("Admin Test Root CA")
    server = root.issue("localhost", server=True, sans=["localhost", "127.0.0.1"])
    (target / "rootCA.crt").write_bytes(root.cert_pem)
    (target / "server.crt").write_bytes(server.cert_pem())
    (target / "server.key").write_bytes(server.key_pem(password=KEY_PASSWORD.encode()))
    client = root.issue("client", client=True)
    (target / "client.crt").write_bytes(client.cert_pem())
    return target, root


@pytest.fixture
def cert_dir(pki) -> Path:
    return pki[0]


def get_json(broker, path: str, token="default"):
    status, body = broker.admin("GET", path, token=token)
    return status, json.loads(body) if body else None


def served_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only looking at what is served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def test_probes_are_open_and_the_api_needs_the_token(broker_process):
    broker = broker_process('listeners.tcp.default.bind = "127.0.0.1:0"\n'
                            f'dashboard {{ listeners.http.bind = "127.0.0.1:0", token = "{TOKEN}" }}\n', token=TOKEN)
    assert broker.admin("GET", "/healthz", token=None)[0] == 200
    assert broker.admin("GET", "/readyz", token=None)[0] == 200
    for path in ("/api/v5/listeners", "/api/v5/clients", "/metrics", "/api/v5/listeners/tcp:default"):
        assert broker.admin("GET", path, token=None)[0] == 401
        assert broker.admin("GET", path, token="wrong-token")[0] == 401
        assert broker.admin("GET", path, token=TOKEN[:-1])[0] == 401
        assert broker.admin("GET", path)[0] == 200
    assert broker.admin("POST", "/api/v5/listeners/tcp:default/reload", token=None)[0] == 401


def test_token_file_is_reread_when_it_changes(broker_process, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    broker = broker_process('listeners.tcp.default.bind = "127.0.0.1:0"\n'
                            f'dashboard {{ listeners.http.bind = "127.0.0.1:0", token_file = "{token_file}",'
                            ' token = "ignored-when-a-file-is-set" }\n', token="first-token")
    assert broker.admin("GET", "/api/v5/listeners")[0] == 200
    assert broker.admin("GET", "/api/v5/listeners", token="ignored-when-a-file-is-set")[0] == 401
    replacement = tmp_path / "token.new"
    replacement.write_text("second-token\n")
    replacement.replace(token_file)
    assert broker.admin("GET", "/api/v5/listeners", token="second-token")[0] == 200
    assert broker.admin("GET", "/api/v5/listeners", token="first-token")[0] == 401


def test_open_api_on_loopback_without_token(broker_process):
    broker = broker_process()
    status, listeners = get_json(broker, "/api/v5/listeners", token=None)
    assert status == 200
    assert [entry["id"] for entry in listeners] == ["tcp:default"]


def test_wide_bind_without_token_is_refused(tmp_path):
    config = tmp_path / "wide.conf"
    config.write_text('listeners.tcp.default.bind = "127.0.0.1:0"\ndashboard.listeners.http.bind = "0.0.0.0:0"\n')
    result = subprocess.run([sys.executable, "-m", "wharf_broker", "--config", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "dashboard.listeners.http.bind" in result.stderr and "dashboard.token" in result.stderr


@requires_tls
def test_listeners_list_and_show(broker_process, cert_dir):
    broker = broker_process(tls_config(cert_dir), token=TOKEN)
    status, listeners = get_json(broker, "/api/v5/listeners")
    assert status == 200
    by_id = {entry["id"]: entry for entry in listeners}
    assert set(by_id) == {"tcp:default", "tcp:spare", "ssl:default"}
    tcp = by_id["tcp:default"]
    assert tcp == {"id": "tcp:default", "type": "tcp", "name": "default",
                   "bind": f"127.0.0.1:{broker.port('tcp:default')}",
                   "enable": True, "running": True, "current_connections": 0, "max_connections": 100}
    assert by_id["tcp:spare"]["enable"] is False and by_id["tcp:spare"]["running"] is False

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="counted")
    client.connect("127.0.0.1", broker.port("tcp:default"))
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, listeners = get_json(broker, "/api/v5/listeners")
            if {e["id"]: e for e in listeners}["tcp:default"]["current_connections"] == 1:
                break
            time.sleep(0.1)
        assert {e["id"]: e for e in listeners}["tcp:default"]["current_connections"] == 1
        status, clients = get_json(broker, "/api/v5/clients")
        assert status == 200
        assert "counted" in json.dumps(clients)
    finally:
        client.disconnect()
        client.loop_stop()

    status, ssl_view = get_json(broker, "/api/v5/listeners/ssl:default")
    assert status == 200
    assert ssl_view["ssl_options"]["certfile"] == str(cert_dir / "server.crt")
    assert ssl_view["ssl_options"]["verify"] == "verify_peer"
    assert ssl_view["ssl_options"]["password"] == "******"
    assert get_json(broker, "/api/v5/listeners/tcp:nope")[0] == 404
    assert get_json(broker, "/api/v5/listeners/tcp:spare")[0] == 409


@requires_tls
def test_no_key_material_or_password_anywhere(broker_process, cert_dir):
    broker = broker_process(tls_config(cert_dir), token=TOKEN)
    key_text = (cert_dir / "server.key").read_text()
    key_body = "".join(key_text.strip().splitlines()[1:-1])[:40]
    assert "ENCRYPTED PRIVATE KEY" in key_text
    paths = ["/api/v5/listeners", "/api/v5/listeners/ssl:default", "/api/v5/listeners/ssl:default/certificate",
             "/api/v5/listeners/tcp:default", "/api/v5/clients", "/metrics"]
    for path in paths:
        status, body = broker.admin("GET", path)
        assert status == 200, path
        text = body.decode()
        assert "PRIVATE KEY" not in text, path
        assert key_body not in text.replace("\\n", ""), path
        assert KEY_PASSWORD not in text, path
        assert TOKEN not in text, path


@requires_tls
def test_certificate_status(broker_process, cert_dir):
    broker = broker_process(tls_config(cert_dir), token=TOKEN)
    status, cert = get_json(broker, "/api/v5/listeners/ssl:default/certificate")
    assert status == 200
    assert set(cert) >= {"subject", "sans", "issuer", "not_before", "not_after", "fingerprint_sha256", "serial",
                         "loaded_at", "last_error", "last_reload_at"}
    assert "CN=localhost" in cert["subject"] and "Admin Test Root CA" in cert["issuer"]
    assert "DNS:localhost" in cert["sans"] and "IP:127.0.0.1" in cert["sans"]
    assert cert["fingerprint_sha256"] == served_fingerprint(broker.port("ssl:default"))
    assert cert["last_error"] is None
    assert get_json(broker, "/api/v5/listeners/tcp:default/certificate")[0] == 400


@requires_tls
def test_reload_endpoint(broker_process, pki):
    cert_dir, root = pki
    broker = broker_process(tls_config(cert_dir), token=TOKEN)
    port = broker.port("ssl:default")
    old = served_fingerprint(port)

    def reload(body=None):
        status, raw = broker.admin("POST", "/api/v5/listeners/ssl:default/reload",
                                   body=json.dumps(body).encode() if body is not None else None)
        return status, json.loads(raw)

    # Nothing changed: nothing to swap.
    assert reload() == (200, {"reloaded": False, "fingerprint": old})
    # Expecting a certificate the files do not carry: 409 after the (short) wait; the old one keeps serving.
    status, body = reload({"fingerprint": "ab" * 32, "timeout": 0.5})
    assert status == 409 and body["fingerprint"] == old
    # Garbage in the files: 422, old one keeps serving.
    (cert_dir / "server.crt").write_text("not a certificate\n")
    status, body = reload()
    assert status == 422 and body["fingerprint"] == old
    assert served_fingerprint(port) == old
    _, cert = get_json(broker, "/api/v5/listeners/ssl:default/certificate")
    assert cert["last_error"]
    # A new valid pair from the same CA: swapped, and the expected fingerprint is what is served.
    issued = root.issue("localhost", server=True, sans=["localhost", "127.0.0.1"])
    (cert_dir / "server.key").write_bytes(issued.key_pem(password=KEY_PASSWORD.encode()))
    (cert_dir / "server.crt").write_bytes(issued.cert_pem())
    status, body = reload({"fingerprint": issued.fingerprint, "timeout": 10})
    assert status == 200 and body == {"reloaded": True, "fingerprint": issued.fingerprint}
    assert served_fingerprint(port) == issued.fingerprint
    # Bad request bodies.
    assert reload({"fingerprint": "xyz"})[0] == 400
    assert reload({"timeout": -1})[0] == 400
    assert broker.admin("POST", "/api/v5/listeners/ssl:default/reload", body=b"{nope")[0] == 400
    assert broker.admin("POST", "/api/v5/listeners/tcp:default/reload")[0] == 400


@requires_tls
def test_update_ssl_options(broker_process, cert_dir):
    broker = broker_process(tls_config(cert_dir), token=TOKEN)

    def put(body):
        status, raw = broker.admin("PUT", "/api/v5/listeners/ssl:default", body=json.dumps(body).encode())
        return status, json.loads(raw)

    status, view = put({"ssl_options": {"verify": "verify_none", "depth": 4}})
    assert status == 200
    assert view["ssl_options"]["verify"] == "verify_none" and view["ssl_options"]["depth"] == 4
    # Reading the view back and sending it again (masked password included) changes nothing.
    status, again = put({"ssl_options": view["ssl_options"]})
    assert status == 200 and again["ssl_options"] == view["ssl_options"]
    # Invalid values are refused whole, with the key named; nothing is applied.
    status, error = put({"ssl_options": {"verify": "sometimes", "depth": 2}})
    assert status == 400 and "ssl_options.verify" in error["message"]
    assert [e["field"] for e in error["errors"]] == ["verify"]
    # A broken rule of the options table comes back by its key under ssl_options.
    status, error = put({"ssl_options": {"fail_if_no_peer_cert": True, "depth": 500}})
    assert status == 400
    assert {(e["field"], e["message"]) for e in error["errors"]} == {
        ("fail_if_no_peer_cert", "needs verify = verify_peer"), ("depth", "must be between 0 and 100, not 500")}
    status, error = put({"ssl_options": {"certfile": str(cert_dir / "client.crt")}})
    assert status == 400 and "keyfile" in error["message"]
    _, current = get_json(broker, "/api/v5/listeners/ssl:default")
    assert current["ssl_options"]["depth"] == 4 and current["ssl_options"]["certfile"].endswith("server.crt")
    assert put({"bind": "127.0.0.1:1"})[0] == 400
    assert put({"ssl_options": {"verify": "verify_none"}, "max_connections": 3})[0] == 400
    assert broker.admin("PUT", "/api/v5/listeners/tcp:default",
                        body=json.dumps({"ssl_options": {}}).encode())[0] == 400
    assert broker.admin("PUT", "/api/v5/listeners/ssl:default", body=None)[0] == 400


def test_metrics(broker_process):
    broker = broker_process('listeners.tcp.default { bind = "127.0.0.1:0", max_connections = 1 }\n'
                            'dashboard.listeners.http.bind = "127.0.0.1:0"\n')
    first = socket.create_connection(("127.0.0.1", broker.port("tcp:default")))
    try:
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            status, body = broker.admin("GET", "/metrics")
            text = body.decode()
            if 'wharf_listener_connections{listener="tcp:default"} 1' in text:
                break
            time.sleep(0.1)
        assert 'wharf_listener_connections{listener="tcp:default"} 1' in text
        second = socket.create_connection(("127.0.0.1", broker.port("tcp:default")))
        second.settimeout(5)
        assert second.recv(10) == b""  # refused: closed at once
        second.close()
        status, body = broker.admin("GET", "/metrics")
        text = body.decode()
        assert 'wharf_listener_connections_refused_total{listener="tcp:default",reason="max_connections"} 1' in text
        assert "# TYPE wharf_listener_connections gauge" in text
    finally:
        first.close()
