"""The operator's signalling against a real ``wharf-broker`` process running the config the operator renders.

Certificates sit in a directory laid out as the kubelet projects a Secret volume (files are symlinks into
``..data``, which is swapped atomically), the broker listens on 127.0.0.1 with ephemeral ports, and every
served certificate is checked with a real TLS handshake.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from operator_pki import make_ca, make_leaf
from wharf_operator import render
from wharf_operator.crd import defaulted_spec
from wharf_operator.signalling import LOOPBACK_ONLY, BrokerAdmin, PodTarget

TOKEN = "broker-admin-token"


def project(directory: Path, files: dict[str, bytes]) -> None:
    """Write a Secret volume the way the kubelet does: a new timestamped dir, then an atomic ``..data`` swap."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..{time.time_ns()}"
    stamp.mkdir()
    for name, data in files.items():
        (stamp / name).write_bytes(data)
    staging = directory / "..data_tmp"
    staging.symlink_to(stamp.name)
    os.replace(staging, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def served_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


@pytest.fixture
def rendered_broker(tmp_path, broker_process):
    """A real broker started from the operator's rendering of an MQTTBroker with one ssl listener."""
    pytest.importorskip("wharf_broker.cli", reason="the broker's CLI is not there yet")
    ca = make_ca()
    first = make_leaf(ca, sans=["localhost"])
    root = tmp_path / "wharf"
    project(root / "certs" / "mqtts", {"tls.crt": first.cert_pem, "tls.key": first.key_pem(),
                                       "ca.crt": ca.cert_pem})
    project(root / "admin", {"token": TOKEN.encode()})
    spec = defaulted_spec({"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883,
                                          "tls": {"secretName": "broker-tls"}}],
                           # The broker's own poll stays out of the way: every swap here is the operator's.
                           "reloadInterval": "3600s"})
    tree = render.config_tree(spec, root=str(root))
    # In a pod the broker binds 0.0.0.0 on fixed ports; here only loopback with ephemeral ports.
    tree["listeners"]["ssl"]["mqtts"]["bind"] = "127.0.0.1:0"
    tree["dashboard"]["listeners"]["http"]["bind"] = "127.0.0.1:0"
    tree["prometheus"]["bind"] = "127.0.0.1:0"
    broker = broker_process(render.to_hocon(tree), token=TOKEN)
    admin_port = int(broker.admin_url.rsplit(":", 1)[1])
    return broker, ca, first, root, PodTarget("wharf-0", "127.0.0.1", admin_port)


def test_rendered_broker_serves_metrics_without_the_admin_token(rendered_broker):
    """The pod's port "metrics": Prometheus text with no credential, nothing else; the admin port keeps its token."""
    broker = rendered_broker[0]
    port = int(broker.wait_for_log(r"metrics on 127\.0\.0\.1:(\d+)")[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert "wharf_listener_connections_accepted_total" in response.read().decode()
    for method, path in (("PUT", "/api/v5/listeners/ssl:mqtts"), ("POST", "/metrics")):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method=method,
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == (405 if path == "/metrics" else 404)
    assert broker.admin("GET", "/metrics", token=None)[0] == 401


async def test_signalled_rotation_is_served_without_restart(rendered_broker):
    broker, ca, first, root, pod = rendered_broker
    port = broker.port("ssl:mqtts")
    assert await asyncio.to_thread(served_fingerprint, port) == first.fingerprint
    admin = BrokerAdmin(LOOPBACK_ONLY, connect_timeout=2.0, request_timeout=10.0)
    try:
        assert (await admin.served_certificate(pod, TOKEN, "ssl:mqtts"))["fingerprint_sha256"] == first.fingerprint

        second = make_leaf(ca, sans=["localhost"])

        async def kubelet_later() -> None:
            await asyncio.sleep(0.3)  # the signal arrives before the files change, as it does in a cluster
            project(root / "certs" / "mqtts", {"tls.crt": second.cert_pem, "tls.key": second.key_pem(),
                                               "ca.crt": ca.cert_pem})

        swap = asyncio.create_task(kubelet_later())
        result = await admin.rotate([pod], TOKEN, "ssl:mqtts", second.fingerprint, wait_seconds=10)
        await swap
        assert result.serving == 1, result.errors
        assert await asyncio.to_thread(served_fingerprint, port) == second.fingerprint
        assert (await admin.served_certificate(pod, TOKEN, "ssl:mqtts"))["fingerprint_sha256"] == second.fingerprint

        # Material the broker must refuse: the certificate of one key with another key.
        third = make_leaf(ca, sans=["localhost"])
        project(root / "certs" / "mqtts", {"tls.crt": third.cert_pem, "tls.key": second.key_pem(),
                                           "ca.crt": ca.cert_pem})
        refused = await admin.reload(pod, TOKEN, "ssl:mqtts", third.fingerprint, wait_seconds=3)
        assert not refused.ok and refused.status in (409, 422), refused
        assert await asyncio.to_thread(served_fingerprint, port) == second.fingerprint

        wrong_token = await admin.reload(pod, "not-the-token", "ssl:mqtts", None, wait_seconds=0)
        assert not wrong_token.ok and wrong_token.status == 401
    finally:
        await admin.close()
    assert broker.running()  # never restarted


def negotiated_version(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.version()


async def test_live_ssl_options_update_reaches_the_broker(rendered_broker):
    broker, _, first, _, pod = rendered_broker
    assert await asyncio.to_thread(negotiated_version, broker.port("ssl:mqtts")) == "TLSv1.3"
    admin = BrokerAdmin(LOOPBACK_ONLY, connect_timeout=2.0, request_timeout=10.0)
    spec = defaulted_spec({"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883,
                                          "tls": {"secretName": "broker-tls", "versions": ["tlsv1.2"]}}],
                           "reloadInterval": "3600s"})
    options = render.live_ssl_options(render.config_tree(spec, root=str(Path(broker.config_path).parent / "wharf")))
    try:
        await admin.update_ssl_options(pod, TOKEN, "ssl:mqtts", options["ssl:mqtts"])
    finally:
        await admin.close()
    assert await asyncio.to_thread(negotiated_version, broker.port("ssl:mqtts")) == "TLSv1.2"
    assert broker.running()


async def test_encrypted_key_with_the_password_from_its_own_secret(tmp_path, broker_process):
    """keyPasswordSecretRef: the password reaches the broker as a mounted file, never in the rendered config."""
    pytest.importorskip("wharf_broker.cli", reason="the broker's CLI is not there yet")
    ca = make_ca()
    leaf = make_leaf(ca, sans=["localhost"])
    root = tmp_path / "wharf"
    project(root / "certs" / "mqtts", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem(b"k3y-pass")})
    project(root / "keypass" / "mqtts", {"password": b"k3y-pass\n"})
    project(root / "admin", {"token": TOKEN.encode()})
    spec = defaulted_spec({"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883, "tls": {
        "secretName": "broker-tls", "keyPasswordSecretRef": {"name": "broker-key-password"}}}]})
    tree = render.config_tree(spec, root=str(root))
    tree["listeners"]["ssl"]["mqtts"]["bind"] = "127.0.0.1:0"
    tree["dashboard"]["listeners"]["http"]["bind"] = "127.0.0.1:0"
    tree["prometheus"]["bind"] = "127.0.0.1:0"
    text = render.to_hocon(tree)
    assert "k3y-pass" not in text
    broker = broker_process(text, token=TOKEN)
    assert await asyncio.to_thread(served_fingerprint, broker.port("ssl:mqtts")) == leaf.fingerprint


def mqtt_connect(port: int, cert_dir: Path, client: Any, server_ca: bytes, name: str) -> ssl.SSLSocket | None:
    """An MQTT 3.1.1 client with ``client``'s certificate: its open TLS socket once CONNACK said yes, else None."""
    (cert_dir / f"{name}.crt").write_bytes(client.cert_pem)
    (cert_dir / f"{name}.key").write_bytes(client.key_pem())
    context = ssl.create_default_context(cadata=server_ca.decode())
    context.check_hostname = False
    context.load_cert_chain(str(cert_dir / f"{name}.crt"), str(cert_dir / f"{name}.key"))
    client_id = name.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        tls = context.wrap_socket(raw)
        tls.sendall(bytes([0x10, len(variable)]) + variable)
        if tls.recv(4) == b"\x20\x02\x00\x00":
            return tls
        tls.close()
    except (ssl.SSLError, ConnectionError):
        raw.close()
    return None


async def test_a_client_ca_bundle_that_would_lock_out_connected_devices_is_held_by_the_rendered_broker(
        tmp_path, broker_process):
    """caRef + verify_peer as the operator renders them: the broker answers the operator's check with the connected
    devices' count and issuer, holds the projected bundle on its own re-checks and on an unnamed reload, and loads
    it when the operator's reload names it."""
    pytest.importorskip("wharf_broker.cli", reason="the broker's CLI is not there yet")
    server_ca, fleet1, fleet2 = make_ca("Server CA"), make_ca("Fleet CA 1"), make_ca("Fleet CA 2")
    leaf = make_leaf(server_ca, sans=["localhost"])
    root = tmp_path / "wharf"
    project(root / "certs" / "mqtts", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem(),
                                       "ca.crt": server_ca.cert_pem})
    project(root / "ca" / "mqtts", {"ca.crt": fleet1.cert_pem + fleet2.cert_pem})
    project(root / "admin", {"token": TOKEN.encode()})
    spec = defaulted_spec({"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883, "tls": {
        "secretName": "broker-tls", "caRef": {"name": "fleet-ca"}, "verify": "verify_peer",
        "failIfNoPeerCert": True}}], "reloadInterval": "1s"})
    tree = render.config_tree(spec, root=str(root))
    assert tree["listeners"]["ssl"]["mqtts"]["ssl_options"]["client_ca_guard"] is True
    tree["authentication"]["allow_anonymous"] = True  # the devices' certificates are what this is about
    tree["listeners"]["ssl"]["mqtts"]["bind"] = "127.0.0.1:0"
    tree["dashboard"]["listeners"]["http"]["bind"] = "127.0.0.1:0"
    broker = broker_process(render.to_hocon(tree), token=TOKEN)
    pod = PodTarget("wharf-0", "127.0.0.1", int(broker.admin_url.rsplit(":", 1)[1]))
    port = broker.port("ssl:mqtts")
    certs_dir = tmp_path / "clients"
    certs_dir.mkdir()
    devices = [await asyncio.to_thread(mqtt_connect, port, certs_dir, make_leaf(fleet1, f"dev-{i}", client=True),
                                       server_ca.cert_pem, f"dev-{i}") for i in range(3)]
    assert all(devices)
    admin = BrokerAdmin(LOOPBACK_ONLY, connect_timeout=2.0, request_timeout=10.0)
    try:
        bundle = fleet2.cert_pem  # Fleet CA 1 dropped
        report = await admin.client_ca_check(pod, TOKEN, "ssl:mqtts", bundle)
        assert report["would_fail"] == 3 and report["connections"] == 3
        assert report["issuers"] == [{"issuer": fleet1.cert.subject.rfc4514_string(), "clients": 3}]
        assert (await admin.client_ca_check(pod, TOKEN, "ssl:mqtts", fleet1.cert_pem + bundle))["would_fail"] == 0

        project(root / "ca" / "mqtts", {"ca.crt": bundle})  # the kubelet projects it; the broker re-checks every 1 s
        await asyncio.to_thread(broker.wait_for_log, r"3 connected client\(s\) would no longer verify", 15)
        held = await admin.reload(pod, TOKEN, "ssl:mqtts", leaf.fingerprint, wait_seconds=2)
        assert not held.ok and held.status == 409 and "holds its new client-CA bundle back" in (held.error or "")
        late = await asyncio.to_thread(mqtt_connect, port, certs_dir, make_leaf(fleet1, "dev-late", client=True),
                                       server_ca.cert_pem, "dev-late")
        assert late is not None  # devices of Fleet CA 1 still get in
        late.close()

        digest = hashlib.sha256(bundle).hexdigest()
        signalled = await admin.reload(pod, TOKEN, "ssl:mqtts", leaf.fingerprint, 5, client_ca_sha256=digest)
        assert signalled.ok, signalled
        assert await asyncio.to_thread(mqtt_connect, port, certs_dir, make_leaf(fleet1, "dev-later", client=True),
                                       server_ca.cert_pem, "dev-later") is None
        newcomer = await asyncio.to_thread(mqtt_connect, port, certs_dir, make_leaf(fleet2, "dev-new", client=True),
                                           server_ca.cert_pem, "dev-new")
        assert newcomer is not None
        newcomer.close()

        # Named before the kubelet projects it (as the operator's forced signal usually is): the broker's own
        # re-check loads it then, although the devices of Fleet CA 1 are still connected.
        fleet3 = make_ca("Fleet CA 3")
        early = await admin.reload(pod, TOKEN, "ssl:mqtts", leaf.fingerprint, 5,
                                   client_ca_sha256=hashlib.sha256(fleet3.cert_pem).hexdigest())
        assert early.ok  # nothing new in the files yet
        project(root / "ca" / "mqtts", {"ca.crt": fleet3.cert_pem})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            third = await asyncio.to_thread(mqtt_connect, port, certs_dir, make_leaf(fleet3, "dev-3", client=True),
                                            server_ca.cert_pem, "dev-3")
            if third is not None:
                third.close()
                break
            await asyncio.sleep(0.2)
        assert third is not None, broker.log
    finally:
        await admin.close()
        for device in devices:
            if device is not None:
                device.close()
