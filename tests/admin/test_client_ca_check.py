"""``POST /api/v5/listeners/{id}/client_ca_check`` against a real broker with real mTLS clients of two client CAs:
how many connected clients a candidate client-CA bundle would lock out, by issuer."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

TOKEN = "ca-check-token-0123456789"

pytest.importorskip("wharf_broker.tls")


@pytest.fixture
def two_cas(tmp_path):
    from wharf_broker.tls.devpki import CertificateAuthority

    target = tmp_path / "certs"
    target.mkdir()
    server_ca = CertificateAuthority("Server CA")
    ca1 = CertificateAuthority("Fleet CA 1")
    ca2 = CertificateAuthority("Fleet CA 2")
    server = server_ca.issue("localhost", server=True, sans=["localhost", "127.0.0.1"])
    (target / "server-ca.crt").write_bytes(server_ca.cert_pem)
    (target / "server.crt").write_bytes(server.cert_pem())
    (target / "server.key").write_bytes(server.key_pem())
    (target / "clients-ca.crt").write_bytes(ca1.cert_pem + ca2.cert_pem)
    return target, ca1, ca2


def config(cert_dir: Path) -> str:
    return f"""
listeners.tcp.default.enable = false
listeners.ssl.default {{
  bind = "127.0.0.1:0"
  ssl_options {{
    certfile = "{cert_dir}/server.crt"
    keyfile = "{cert_dir}/server.key"
    cacertfile = "{cert_dir}/clients-ca.crt"
    verify = verify_peer
    fail_if_no_peer_cert = true
  }}
}}
dashboard {{ listeners.http.bind = "127.0.0.1:0", token = "{TOKEN}" }}
"""


def tls_client(cert_dir: Path, ca, name: str, port: int) -> mqtt.Client:
    issued = ca.issue(name, client=True)
    (cert_dir / f"{name}.crt").write_bytes(issued.cert_pem())
    (cert_dir / f"{name}.key").write_bytes(issued.key_pem())
    context = ssl.create_default_context(cafile=str(cert_dir / "server-ca.crt"))
    context.load_cert_chain(str(cert_dir / f"{name}.crt"), str(cert_dir / f"{name}.key"))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    client.tls_set_context(context)
    connected: list[int] = []
    client.on_connect = lambda c, u, f, rc, p=None: connected.append(int(rc.value if hasattr(rc, "value") else rc))
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 15
    while not connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connected == [0], f"{name} did not connect: {connected}"
    return client


def get_json(broker, path: str) -> tuple[int, dict]:
    status, raw = broker.admin("GET", path)
    return status, json.loads(raw) if raw else {}


def check(broker, pem: bytes | str, token: str | None = "default") -> tuple[int, dict]:
    body = json.dumps({"ca_pem": pem.decode() if isinstance(pem, bytes) else pem}).encode()
    status, raw = broker.admin("POST", "/api/v5/listeners/ssl:default/client_ca_check", body, token=token)
    return status, json.loads(raw) if raw else {}


def test_a_bundle_without_a_connected_clients_ca_is_reported_by_issuer(broker_process, two_cas):
    cert_dir, ca1, ca2 = two_cas
    broker = broker_process(config(cert_dir), token=TOKEN)
    port = broker.port("ssl:default")
    clients = [tls_client(cert_dir, ca1, f"fleet1-{i}", port) for i in range(3)]
    clients.append(tls_client(cert_dir, ca2, "fleet2-0", port))
    try:
        status, report = check(broker, ca2.cert_pem)  # CA 1 dropped
        assert status == 200, report
        assert report["connections"] == 4
        assert report["would_fail"] == 3
        assert report["issuers"] == [{"issuer": "CN=Fleet CA 1,O=Wharf Test,C=SE", "clients": 3}]
        assert report["methods"] == {"chain": 4}
        assert report["unchecked"] == 0

        status, report = check(broker, ca1.cert_pem + ca2.cert_pem)  # both: nobody
        assert status == 200 and report["would_fail"] == 0 and report["issuers"] == []

        status, report = check(broker, ca1.cert_pem)  # CA 2 dropped
        assert report["would_fail"] == 1
        assert report["issuers"] == [{"issuer": "CN=Fleet CA 2,O=Wharf Test,C=SE", "clients": 1}]

        # The same CA re-issued with the same key (a CA certificate's own renewal) keeps its clients.
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        renewed = (x509.CertificateBuilder().subject_name(ca1.cert.subject).issuer_name(ca1.cert.subject)
                   .public_key(ca1.key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(ca1.cert.not_valid_before_utc)
                   .not_valid_after(ca1.cert.not_valid_after_utc)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(ca1.key, hashes.SHA256()))
        status, report = check(broker, renewed.public_bytes(serialization.Encoding.PEM) + ca2.cert_pem)
        assert report["would_fail"] == 0, report

        # After the CA 1 clients left, dropping CA 1 locks nobody out.
        for client in clients[:3]:
            client.disconnect()
            client.loop_stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, report = check(broker, ca2.cert_pem)
            if report["connections"] == 1:
                break
            time.sleep(0.1)
        assert report["connections"] == 1 and report["would_fail"] == 0
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()


def test_the_check_needs_the_token_and_a_bundle(broker_process, two_cas):
    cert_dir, ca1, _ = two_cas
    broker = broker_process(config(cert_dir), token=TOKEN)
    assert check(broker, ca1.cert_pem, token=None)[0] == 401
    status, error = check(broker, "not a certificate")
    assert status == 400 and error["code"] == "BAD_REQUEST"
    status, error = check(broker, "")
    assert status == 400
    leaf_only = ca1.issue("not-a-ca", client=True).cert_pem()
    status, error = check(broker, leaf_only)
    assert status == 400 and "no CA certificate" in error["message"]
    status, _ = broker.admin("POST", "/api/v5/listeners/ssl:nope/client_ca_check", b"{}")
    assert status == 404


def accepted(cert_dir: Path, ca, name: str, port: int) -> bool:
    """Whether a new client of ``ca`` gets a CONNACK now (MQTT 3.1.1 over a plain TLS socket)."""
    issued = ca.issue(name, client=True)
    (cert_dir / f"{name}.crt").write_bytes(issued.cert_pem())
    (cert_dir / f"{name}.key").write_bytes(issued.key_pem())
    context = ssl.create_default_context(cafile=str(cert_dir / "server-ca.crt"))
    context.load_cert_chain(str(cert_dir / f"{name}.crt"), str(cert_dir / f"{name}.key"))
    client_id = name.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(bytes([0x10, len(variable)]) + variable)
                return tls.recv(4) == b"\x20\x02\x00\x00"
    except (ssl.SSLError, ConnectionError):
        return False


def test_the_guard_holds_a_cacertfile_that_would_lock_clients_out_until_a_reload_names_it(broker_process, two_cas):
    cert_dir, ca1, ca2 = two_cas
    text = config(cert_dir).replace("fail_if_no_peer_cert = true", 'fail_if_no_peer_cert = true\n'
                                    '    client_ca_guard = true\n    reload_interval = "1s"')
    broker = broker_process(text, token=TOKEN)
    port = broker.port("ssl:default")
    clients = [tls_client(cert_dir, ca1, f"fleet1-{i}", port) for i in range(2)]
    try:
        (cert_dir / "clients-ca.crt").write_bytes(ca2.cert_pem)  # CA 1 dropped
        digest = hashlib.sha256(ca2.cert_pem).hexdigest()
        # The periodic re-check holds it, and says so.
        broker.wait_for_log(r"2 connected client\(s\) would no longer verify", timeout=15)
        status, raw = broker.admin("POST", "/api/v5/listeners/ssl:default/reload", b"{}")
        answer = json.loads(raw)
        assert status == 409 and answer["code"] == "CLIENT_CA_HELD", answer
        assert digest in answer["message"] and "Fleet CA 1" in answer["message"]
        assert accepted(cert_dir, ca1, "fleet1-late", port)  # the previous bundle still verifies clients
        _, listener = get_json(broker, "/api/v5/listeners/ssl:default")
        assert '"would_fail": 2' in json.dumps(listener), listener

        body = json.dumps({"client_ca_sha256": "0" * 64}).encode()  # another bundle's approval: still held
        assert broker.admin("POST", "/api/v5/listeners/ssl:default/reload", body)[0] == 409
        body = json.dumps({"client_ca_sha256": digest}).encode()
        status, raw = broker.admin("POST", "/api/v5/listeners/ssl:default/reload", body)
        assert status == 200 and json.loads(raw)["reloaded"] is True, raw
        assert not accepted(cert_dir, ca1, "fleet1-later", port)  # the new bundle is served
        assert accepted(cert_dir, ca2, "fleet2-new", port)
        assert all(client.is_connected() for client in clients)  # open connections stay
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
