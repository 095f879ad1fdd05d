"""The admin API without a token (the embedded default, loopback only) against browsers: cross-site requests
(CSRF with simple content types, foreign Origin) and DNS rebinding (a foreign Host on the loopback socket) are
refused, counted and logged, while the API still serves local tools and the Dashboard its own forms. Raw HTTP
requests on a socket, against a real broker process, with a paho QoS 1 client alongside."""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from qos1_witness import PahoQos1Witness  # noqa: E402

pytest.importorskip("wharf_broker.tls")


def config(certs: Path, token: str = "") -> str:
    return f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
listeners.ssl.default {{
  bind = "127.0.0.1:0"
  ssl_options {{
    certfile = "{certs}/server.crt", keyfile = "{certs}/server.key", cacertfile = "{certs}/rootCA.crt"
    verify = verify_peer, fail_if_no_peer_cert = true
  }}
}}
dashboard.listeners.http.bind = "127.0.0.1:0"
dashboard.default_password = "right-password"
{f'dashboard.token = "{token}"' if token else ""}
"""


def raw_http(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written by hand (so that Host and Origin are exactly what a browser would send)."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def admin_port(broker) -> int:
    return int(broker.admin_url.rsplit(":", 1)[1])


def mutual_tls(broker) -> tuple[str, bool]:
    status, body = broker.admin("GET", "/api/v5/listeners/ssl:default")
    assert status == 200
    options = json.loads(body)["ssl_options"]
    return options["verify"], options["fail_if_no_peer_cert"]


def metric(text: str, reason: str) -> float:
    match = re.search(r'^wharf_admin_requests_refused_total\{reason="' + reason + r'"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


TURN_OFF_MTLS = json.dumps({"ssl_options": {"verify": "verify_none", "fail_if_no_peer_cert": False}}).encode()


def test_cross_site_and_rebinding_requests_are_refused(broker_process, certs):
    broker = broker_process(config(certs))
    port = admin_port(broker)
    local = f"127.0.0.1:{port}"
    with PahoQos1Witness(broker.port("tcp:default")) as witness:
        attacks = [
            # CSRF: a form or fetch(no-cors) from a web page, text/plain body holding JSON.
            ("POST", "/api/v5/listeners/ssl:default/reload",
             {"Host": local, "Origin": "https://evil.example", "Content-Type": "text/plain"}, b"{}"),
            ("POST", "/api/v5/listeners/ssl:default/reload",
             {"Host": local, "Origin": "null", "Content-Type": "application/json"}, b"{}"),
            # Another local web server's page (same host, another port) is another origin.
            ("POST", "/api/v5/listeners/ssl:default/reload",
             {"Host": local, "Origin": "http://127.0.0.1:8080", "Content-Type": "application/json"}, b"{}"),
            # DNS rebinding: evil.example now resolves to 127.0.0.1; the page is same-origin with itself, so PUT
            # and JSON go through the browser: only the Host tells.
            ("PUT", "/api/v5/listeners/ssl:default",
             {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}",
              "Content-Type": "application/json"}, TURN_OFF_MTLS),
            ("PUT", "/api/v5/listeners/ssl:default",
             {"Host": f"evil.example:{port}", "Content-Type": "application/json"}, TURN_OFF_MTLS),
            ("GET", "/api/v5/clients", {"Host": f"evil.example:{port}"}, b""),
            ("GET", "/metrics", {"Host": "evil.example"}, b""),
            ("GET", "/dashboard/login", {"Host": f"evil.example:{port}"}, b""),
            # Simple content types on a state-changing route, even addressed correctly and without Origin.
            ("PUT", "/api/v5/listeners/ssl:default", {"Host": local, "Content-Type": "text/plain"}, TURN_OFF_MTLS),
            ("PUT", "/api/v5/listeners/ssl:default",
             {"Host": local, "Content-Type": "application/x-www-form-urlencoded"}, TURN_OFF_MTLS),
            ("PUT", "/api/v5/listeners/ssl:default",
             {"Host": local, "Content-Type": "multipart/form-data; boundary=x"}, TURN_OFF_MTLS),
            ("PUT", "/api/v5/listeners/ssl:default", {"Host": local}, TURN_OFF_MTLS),  # no type: not JSON
        ]
        expected = [403, 403, 403, 403, 403, 403, 403, 403, 415, 415, 415, 415]
        answers = [raw_http(port, method, path, headers, body)[0] for method, path, headers, body in attacks]
        assert answers == expected
        assert mutual_tls(broker) == ("verify_peer", True)  # nothing turned mutual TLS off
    assert witness.report["acked"] > 0 and witness.report["lost"] == 0, witness.report
    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "foreign_host") == 5
    assert metric(text, "foreign_origin") == 3
    assert metric(text, "content_type") == 4
    assert "admin api: refused" in broker.log and "FOREIGN" not in broker.log


def test_local_tools_and_the_dashboard_still_work(broker_process, certs):
    broker = broker_process(config(certs))
    port = admin_port(broker)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}"):
        status, body = raw_http(port, "GET", "/api/v5/listeners", {"Host": host})
        assert status == 200, host
    # A same-origin JSON request (the API's own origin) is served.
    status, body = raw_http(port, "POST", "/api/v5/listeners/ssl:default/reload",
                            {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}",
                             "Content-Type": "application/json"}, b"{}")
    assert status == 200 and json.loads(body)["reloaded"] is False
    status, _ = raw_http(port, "POST", "/api/v5/listeners/ssl:default/reload", {"Host": f"127.0.0.1:{port}"})
    assert status == 200  # no body: nothing a page could smuggle
    status, body = raw_http(port, "PUT", "/api/v5/listeners/ssl:default",
                            {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json; charset=utf-8"},
                            json.dumps({"ssl_options": {"depth": 5}}).encode())
    assert status == 200, body
    # The Dashboard's own urlencoded login form (Origin null: it sends Referrer-Policy no-referrer).
    status, page = raw_http(port, "GET", "/dashboard/login", {"Host": f"127.0.0.1:{port}"})
    assert status == 200 and b"csrf" in page
    status, _ = raw_http(port, "POST", "/dashboard/login",
                         {"Host": f"127.0.0.1:{port}", "Origin": "null",
                          "Content-Type": "application/x-www-form-urlencoded"}, b"csrf=x&username=a&password=b")
    assert status == 403  # reached the Dashboard, which wants its login cookie (not the guard's 415)


def test_with_a_token_the_host_is_not_checked(broker_process, certs):
    """In a cluster the operator calls the API by the pod's address with the token: no Host restriction."""
    broker = broker_process(config(certs, token="t0ken-t0ken"), token="t0ken-t0ken")
    port = admin_port(broker)
    status, _ = raw_http(port, "GET", "/api/v5/listeners",
                         {"Host": f"10.1.2.3:{port}", "Authorization": "Bearer t0ken-t0ken"})
    assert status == 200
    status, _ = raw_http(port, "GET", "/api/v5/listeners", {"Host": f"10.1.2.3:{port}"})
    assert status == 401
