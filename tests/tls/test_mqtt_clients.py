"""Real MQTT clients over TLS against a real broker process: mosquitto_pub/_sub, paho-mqtt, openssl s_client.

Uses the shared ``broker_process`` fixture (tests/conftest.py) and the bundled PKI in etc/certs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from wharf_broker.tls.devpki import CertificateAuthority

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")


def ssl_config(certs, tmp_path, *, verify: bool, extra: str = "", ssl_extra: str = "") -> str:
    # Copies, so that rotating them in a test never touches the bundled PKI.
    for name in ("server.crt", "server.key", "rootCA.crt"):
        shutil.copy(certs / name, tmp_path / name)
    verify_lines = "verify = verify_peer\n    fail_if_no_peer_cert = true" if verify else "verify = verify_none"
    return f"""
listeners.ssl.default {{
  bind = "127.0.0.1:0"
  max_connections = 512000
  {extra}
  ssl_options {{
    keyfile = "{tmp_path / 'server.key'}"
    certfile = "{tmp_path / 'server.crt'}"
    cacertfile = "{tmp_path / 'rootCA.crt'}"
    {verify_lines}
    {ssl_extra}
  }}
}}
dashboard.listeners.http.bind = "127.0.0.1:0"
"""


def mosquitto(tool: str, port: int, certs, *args: str, client_cert: bool = True, timeout: float = 20):
    command = [tool, "-h", "localhost", "-p", str(port), "--cafile", str(certs / "rootCA.crt"), *args]
    if client_cert:
        command += ["--cert", str(certs / "client.crt"), "--key", str(certs / "client.key")]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_mosquitto_clients_over_mutual_tls(broker_process, certs, tmp_path):
    broker = broker_process(ssl_config(certs, tmp_path, verify=True))
    port = broker.port("ssl:default")
    # Retained, so that the subscriber gets it whenever it subscribes (no race with the publisher).
    published = mosquitto("mosquitto_pub", port, certs, "-t", "tls/test", "-m", "hello over mTLS", "-r")
    assert published.returncode == 0, published.stderr
    received = mosquitto("mosquitto_sub", port, certs, "-t", "tls/test", "-C", "1", "-W", "20")
    assert received.returncode == 0 and received.stdout.strip() == "hello over mTLS", received
    # Without a client certificate the broker refuses the connection.
    refused = mosquitto("mosquitto_pub", port, certs, "-t", "tls/test", "-m", "x", client_cert=False)
    assert refused.returncode != 0
    # A client that does not trust the broker's CA refuses the broker.
    other = CertificateAuthority("Some Other CA")
    (tmp_path / "other-ca.crt").write_bytes(other.cert_pem)
    distrust = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile",
                               str(tmp_path / "other-ca.crt"), "--cert", str(certs / "client.crt"), "--key",
                               str(certs / "client.key"), "-t", "t", "-m", "x"], capture_output=True, timeout=20)
    assert distrust.returncode != 0


def test_paho_over_tls_with_certificate_identity(broker_process, certs, tmp_path):
    import paho.mqtt.client as mqtt

    config = ssl_config(certs, tmp_path, verify=True, extra='peer_cert_as_username = cn')
    broker = broker_process(config)
    port = broker.port("ssl:default")
    received = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(certs / "rootCA.crt"), certfile=str(certs / "client.crt"),
                   keyfile=str(certs / "client.key"))
    client.on_message = lambda c, u, msg: (received.append(msg.payload), done.set())
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("paho/tls", qos=1)
    client.on_subscribe = lambda c, u, mid, rcs, p=None: c.publish("paho/tls", b"via paho", qos=1)
    client.connect("localhost", port)
    client.loop_start()
    try:
        assert done.wait(20)
        assert received == [b"via paho"]
        status, body = broker.admin("GET", "/api/v5/clients")
        assert status == 200
        clients = json.loads(body)
        clients = clients.get("data", clients) if isinstance(clients, dict) else clients
        assert any(c.get("clientid") == "paho-tls" and c.get("username") == "client" for c in clients), clients
    finally:
        client.loop_stop()
        client.disconnect()
    # paho without a client certificate: the TLS handshake (or the first read) fails.
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-anon")
    anonymous.tls_set(ca_certs=str(certs / "rootCA.crt"))
    with pytest.raises((ssl.SSLError, OSError)):
        anonymous.connect("localhost", port)
        for _ in range(50):
            anonymous.loop(0.1)
            if anonymous.is_connected():
                break
        assert not anonymous.is_connected()
        raise OSError("not connected")


def served_fingerprint(port: int, cafile) -> str:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def test_sighup_reloads_certificates_and_mosquitto_sees_the_new_one(broker_process, certs, tmp_path):
    broker = broker_process(ssl_config(certs, tmp_path, verify=False))
    port = broker.port("ssl:default")
    before = served_fingerprint(port, certs / "rootCA.crt")
    # A new server certificate from a new CA; the CA file is rotated with it.
    new_ca = CertificateAuthority("Rotated CA")
    issued = new_ca.issue("localhost", server=True, sans=["localhost", "127.0.0.1"])
    (tmp_path / "server.crt").write_bytes(issued.cert_pem())
    (tmp_path / "server.key").write_bytes(issued.key_pem())
    (tmp_path / "new-ca.crt").write_bytes(new_ca.cert_pem)
    broker.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if served_fingerprint(port, tmp_path / "new-ca.crt") == issued.fingerprint:
                break
        except ssl.SSLError:
            pass
        time.sleep(0.1)
    assert served_fingerprint(port, tmp_path / "new-ca.crt") == issued.fingerprint != before
    ok = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile", str(tmp_path / "new-ca.crt"),
                         "-t", "t", "-m", "after reload"], capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    stale = mosquitto("mosquitto_pub", port, certs, "-t", "t", "-m", "x", client_cert=False)
    assert stale.returncode != 0  # the old CA no longer vouches for the served certificate


def test_wss_and_ssl_on_the_pyopenssl_backend_with_psk(broker_process, certs, tmp_path):
    """PSK puts listeners on the pyOpenSSL backend: MQTT over TLS and over secure WebSocket must work there too."""
    import paho.mqtt.client as mqtt

    (tmp_path / "init.psk").write_text("myclient1:shared-secret\n")
    # TLS 1.2 only, as EMQX and mosquitto advise for PSK: a TLS 1.3 PSK client would otherwise fall back to
    # a certificate handshake (anonymous TLS, correctly without a PSK identity).
    config = ssl_config(certs, tmp_path, verify=False, ssl_extra='versions = ["tlsv1.2"]') + f"""
psk_authentication {{
  enable = true
  init_file = "{tmp_path / 'init.psk'}"
}}
listeners.wss.default {{
  bind = "127.0.0.1:0"
  ssl_options {{
    keyfile = "{tmp_path / 'server.key'}"
    certfile = "{tmp_path / 'server.crt'}"
  }}
}}
"""
    broker = broker_process(config)
    status, body = broker.admin("GET", "/api/v5/listeners/ssl:default/certificate")
    assert status == 200
    for listener, transport in (("ssl:default", "tcp"), ("wss:default", "websockets")):
        done = threading.Event()
        received = []
        payload = transport.encode()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pyossl-{transport}", transport=transport)
        client.tls_set(ca_certs=str(certs / "rootCA.crt"))
        client.on_message = lambda c, u, msg, received=received, done=done: (received.append(msg.payload), done.set())
        client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("pyossl/t", qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p=None, payload=payload: c.publish("pyossl/t", payload, qos=1)
        client.connect("localhost", broker.port(listener))
        client.loop_start()
        try:
            assert done.wait(20), listener
            assert received == [transport.encode()]
        finally:
            client.loop_stop()
            client.disconnect()
    # The PSK itself, through mosquitto (hex-encoded on its command line): the broker lists the client with a
    # PSK suite. (A wrong key is refused at the TLS level: tests/tls/test_psk.py.)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(broker.port("ssl:default")),
                            "--psk-identity", "myclient1", "--psk", b"shared-secret".hex(), "--tls-version",
                            "tlsv1.2", "-i", "psk-sub", "-t", "psk/t", "-W", "30"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listed = None
        deadline = time.monotonic() + 20
        while listed is None and time.monotonic() < deadline:
            status, body = broker.admin("GET", "/api/v5/clients")
            data = json.loads(body)
            data = data.get("data", data) if isinstance(data, dict) else data
            listed = next((c for c in data if c.get("clientid") == "psk-sub"), None)
            time.sleep(0.1)
        assert listed is not None and "PSK" in (listed.get("tls_cipher") or ""), listed
    finally:
        sub.terminate()
        sub.wait(10)
