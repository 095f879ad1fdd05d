"""``POST /api/v5/listeners/{id}/client_ca_check`` against a real broker with real mTLS clients of two client CAs:
how many connected clients a candidate client-CA bundle would lock out, by issuer."""

from __future__ import annotations

import json
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
