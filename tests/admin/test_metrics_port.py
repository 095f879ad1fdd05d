"""The read-only metrics port (``prometheus { enable, bind }``) of a real broker process: Prometheus text without
any credential, every other method and path refused, none of the admin API nor the Dashboard reachable on it,
while ``/metrics`` on the admin API keeps needing the admin token."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request

import pytest
from wharf_broker.config.errors import ConfigError
from wharf_broker.config.loader import load_string

TOKEN = "metrics-port-test-token"
METRICS_LINE = re.compile(r"metrics on (?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)")
CONFIG = f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard {{ listeners.http.bind = "127.0.0.1:0", token = "{TOKEN}" }}
prometheus {{ enable = true, bind = "127.0.0.1:0" }}
"""


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def mqtt_connect(port: int) -> None:
    """One MQTT 3.1.1 CONNECT (client id "m"), its CONNACK read, then a DISCONNECT."""
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 30, 0, 1]) + b"m"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(connect)
        connack = sock.recv(4)
        assert connack[:1] == b"\x20", connack
        sock.sendall(b"\xe0\x00")


@pytest.fixture
def broker(broker_process):
    started = broker_process(CONFIG, token=TOKEN)
    match = METRICS_LINE.search(started.log)
    assert match, started.log
    started.metrics_port = int(match["port"])
    return started


def test_metrics_without_a_token(broker):
    mqtt_connect(broker.port("tcp:default"))
    status, headers, body = request(broker.metrics_port, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    accepted = re.search(r'^wharf_listener_connections_accepted_total\{listener="tcp:default"\} (\d+)', text,
                         re.MULTILINE)
    assert accepted and int(accepted[1]) >= 1, text[:2000]
    status, _, body = request(broker.metrics_port, "HEAD", "/metrics")
    assert (status, body) == (200, b"")
    # A token is neither needed nor looked at: a wrong one changes nothing.
    status, _, _ = request(broker.metrics_port, "GET", "/metrics", headers={"Authorization": "Bearer wrong"})
    assert status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_refused(broker, method):
    status, headers, _ = request(broker.metrics_port, method, "/metrics", body=b"{}",
                                 headers={"Content-Type": "application/json"})
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v5/listeners"),
    ("GET", "/api/v5/clients"),
    ("PUT", "/api/v5/listeners/tcp:default"),
    ("POST", "/api/v5/listeners/tcp:default/reload"),
    ("GET", "/dashboard/"),
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/metrics/extra"),
])
def test_admin_endpoints_are_not_reachable(broker, method, path):
    for token in (None, TOKEN):  # not even with the admin token
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        status, _, body = request(broker.metrics_port, method, path, body=b"{}" if method != "GET" else None,
                                  headers=headers)
        assert status == 404, (method, path, body)
        assert b"GET /metrics only" in body
    # The same listener is still what it was: nothing was changed through the metrics port.
    status, body = broker.admin("GET", "/api/v5/listeners/tcp:default")
    assert status == 200 and b'"running": true' in body


def test_admin_metrics_still_needs_the_token(broker):
    status, _ = broker.admin("GET", "/metrics", token=None)
    assert status == 401
    status, body = broker.admin("GET", "/metrics")
    assert status == 200 and b"wharf_listener_connections_accepted_total" in body


def test_the_admin_port_does_not_serve_the_metrics_port_role(broker):
    """The two ports are distinct sockets: the metrics port is not the admin API under another number."""
    admin_port = int(broker.admin_url.rsplit(":", 1)[1])
    assert admin_port != broker.metrics_port
    status, _, _ = request(admin_port, "GET", "/api/v5/listeners")
    assert status == 401


def test_config_off_by_default_and_checked():
    assert load_string("").prometheus.enable is False
    config = load_string('prometheus { enable = true, bind = "127.0.0.1:9184" }')
    assert config.prometheus.bind == "127.0.0.1:9184"
    with pytest.raises(ConfigError, match="prometheus.bind"):
        load_string('prometheus { enable = true, bind = "nowhere" }')
    with pytest.raises(ConfigError, match="port 18083 is already bound by dashboard.listeners.http"):
        load_string('prometheus { enable = true, bind = "127.0.0.1:18083" }')
    # Disabled, its bind is not checked against the others (as a disabled listener's).
    assert load_string('prometheus { enable = false, bind = "127.0.0.1:18083" }').prometheus.enable is False
