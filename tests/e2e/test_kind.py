"""End to end on kind: image, cert-manager, the chart, TLS through a port-forward, live rotation, clean uninstall.

Skips (with the reason) where docker, kind, kubectl or a kind node image is missing. The tests run in file
order against one cluster and one MQTTBroker: each step builds on the state the previous one left.
"""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from e2e_support import (ROOT, Kubectl, cert_manager_manifest_url, certificate, condition, issuer,
                         missing_prerequisite, mqtt_broker, node_image, pem_fingerprint, pod_uids,
                         renewal_status_patch, restart_counts, served_fingerprint, tls_context, wait_until)
from wharf_operator.resources import selector_string

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

NAMESPACE = "e2e"
BROKER = "mqtt"
PORT = 8883
IMAGE = "wharf:e2e"
# A rotated Secret reaches a pod's files after the kubelet's sync period (1 min by default) plus its cache
# propagation; the operator then signals the broker. The margin covers the signal and the swap.
KUBELET_PROPAGATION_SECONDS = 90
MARGIN_SECONDS = 30


def run(*argv: str, timeout: float = 900) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory):
    reason = missing_prerequisite()
    if reason:
        pytest.skip(f"kind e2e suite skipped: {reason}")
    name = f"wharf-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    try:
        run("kind", "create", "cluster", "--name", name, "--image", node_image(), "--kubeconfig",
            str(kubeconfig), "--wait", "180s")
        k = Kubectl(kubeconfig)
        run("docker", "build", "-t", IMAGE, str(ROOT), timeout=1800)
        run("kind", "load", "docker-image", IMAGE, "--name", name)
        k.run("apply", "-f", cert_manager_manifest_url())
        k.run("-n", "cert-manager", "wait", "--for=condition=Available", "deployment", "--all", "--timeout=300s")
        # cert-manager's webhook must answer before Issuers can be created.
        probe = json.dumps(issuer("probe", "default", {"selfSigned": {}}))
        wait_until(lambda: k.run("apply", "--dry-run=server", "-f", "-", check=False, stdin=probe).returncode == 0,
                   timeout=120, what="cert-manager webhook")
        helm = run(str(ROOT / "tools" / "helm" / "ensure-helm.sh")).strip()
        run(helm, "--kubeconfig", str(kubeconfig), "install", "wharf", str(ROOT / "charts" / "wharf"),
            "--namespace", "wharf-system", "--create-namespace", "--set", "image.tag=e2e",
            "--set", "image.pullPolicy=Never", "--wait", "--timeout", "5m")
        yield k
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], capture_output=True, timeout=300)


def secret_data(k: Kubectl, name: str) -> dict[str, str]:
    data = k.get("-n", NAMESPACE, "secret", name)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


class Broker:
    """The MQTTBroker under test: its CA, a client certificate, and how to reach it."""

    def __init__(self, k: Kubectl, workdir: Path) -> None:
        self.k = k
        self.workdir = workdir

    @property
    def ca_pem(self) -> str:
        return secret_data(self.k, "e2e-ca")["ca.crt"]

    def client_cert(self) -> tuple[str, str]:
        data = secret_data(self.k, "e2e-client")
        cert, key = self.workdir / "client.crt", self.workdir / "client.key"
        cert.write_text(data["tls.crt"])
        key.write_text(data["tls.key"])
        return str(cert), str(key)

    def secret_fingerprint(self) -> str:
        return pem_fingerprint(secret_data(self.k, "e2e-server")["tls.crt"])

    def pods(self) -> dict:
        return self.k.get("-n", NAMESPACE, "pods", "-l", selector_string(BROKER))

    def resource(self) -> dict:
        return self.k.get("-n", NAMESPACE, "mqttbroker", BROKER)

    def mqtt_client(self, port: int, client_id: str, mutual: bool) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.tls_set_context(tls_context(self.ca_pem, self.client_cert() if mutual else None))
        return client


@pytest.fixture(scope="module")
def broker(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Broker:
    k = kubectl
    k.run("create", "namespace", NAMESPACE)
    # self-signed Issuer -> CA -> CA Issuer -> server and client certificates
    k.apply(issuer("selfsigned", NAMESPACE, {"selfSigned": {}}),
            certificate("e2e-ca", NAMESPACE, "selfsigned", isCA=True, commonName="wharf-e2e-ca",
                        duration="87600h"))
    wait_until(lambda: condition(k.get("-n", NAMESPACE, "certificate", "e2e-ca"), "Ready")["status"] == "True",
               timeout=120, what="CA certificate ready")
    k.apply(issuer("e2e-ca", NAMESPACE, {"ca": {"secretName": "e2e-ca"}}),
            certificate("e2e-server", NAMESPACE, "e2e-ca", dnsNames=[BROKER, f"{BROKER}.{NAMESPACE}.svc"],
                        ipAddresses=["127.0.0.1"], usages=["server auth", "digital signature"]),
            certificate("e2e-client", NAMESPACE, "e2e-ca", commonName="e2e-client",
                        usages=["client auth", "digital signature"]))
    for name in ("e2e-server", "e2e-client"):
        wait_until(lambda name=name: condition(k.get("-n", NAMESPACE, "certificate", name), "Ready")["status"]
                   == "True", timeout=120, what=f"{name} ready")
    k.apply(mqtt_broker(BROKER, NAMESPACE, image=IMAGE, port=PORT, server_secret="e2e-server",
                        ca_secret="e2e-ca"))
    b = Broker(k, tmp_path_factory.mktemp("broker"))
    wait_until(lambda: (condition(b.resource(), "Ready") or {}).get("status") == "True", timeout=300,
               what="MQTTBroker Ready")
    return b


def served_by_each_pod(b: Broker) -> set[str]:
    """The fingerprints the broker pods serve, one port-forward per pod."""
    fingerprints = set()
    for name in pod_uids(b.pods()):
        with b.k.port_forward(NAMESPACE, f"pod/{name}", PORT) as forward:
            fingerprints.add(served_fingerprint(forward.port, tls_context(b.ca_pem), "127.0.0.1"))
    return fingerprints


def roundtrip(b: Broker, port: int, mutual: bool, topic: str) -> None:
    received: queue.Queue = queue.Queue()
    subscriber = b.mqtt_client(port, f"sub-{uuid.uuid4().hex[:6]}", mutual)
    subscriber.on_message = lambda _c, _u, m: received.put(m.payload)
    subscriber.connect("127.0.0.1", port)
    subscriber.loop_start()
    publisher = b.mqtt_client(port, f"pub-{uuid.uuid4().hex[:6]}", mutual)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    try:
        subscriber.subscribe(topic, qos=1)
        payload = wait_until(lambda: (publisher.publish(topic, b"hello", qos=1).wait_for_publish(5),
                                      received.get(timeout=1))[1], timeout=60, what="message delivered")
        assert payload == b"hello"
    finally:
        for client in (subscriber, publisher):
            client.disconnect()
            client.loop_stop()


@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
def test_tls_through_port_forward(broker: Broker, mutual: bool) -> None:
    with broker.k.port_forward(NAMESPACE, f"svc/{BROKER}", PORT) as forward:
        assert served_fingerprint(forward.port, tls_context(broker.ca_pem), "127.0.0.1") == \
            broker.secret_fingerprint()
        roundtrip(broker, forward.port, mutual, f"e2e/{'mutual' if mutual else 'one-way'}")


def test_renewal_is_served_live_without_restarts(broker: Broker) -> None:
    k = broker.k
    pods_before = broker.pods()
    old = broker.secret_fingerprint()
    with k.port_forward(NAMESPACE, f"svc/{BROKER}", PORT) as forward:
        # A connection opened before the renewal, subscribed.
        received: queue.Queue = queue.Queue()
        early = broker.mqtt_client(forward.port, "early-subscriber", mutual=True)
        early.on_message = lambda _c, _u, m: received.put(m.payload)
        # paho reconnects by itself, so "still up" means: connected once and never disconnected.
        sessions = {"connects": 0, "disconnects": 0}
        early.on_connect = lambda *_a: sessions.__setitem__("connects", sessions["connects"] + 1)
        early.on_disconnect = lambda *_a: sessions.__setitem__("disconnects", sessions["disconnects"] + 1)
        early.connect("127.0.0.1", forward.port)
        early.loop_start()
        early.subscribe("e2e/renewal", qos=1)
        try:
            k.run("-n", NAMESPACE, "patch", "certificate", "e2e-server", "--subresource=status", "--type=json",
                  "-p", json.dumps(renewal_status_patch()))
            new = wait_until(lambda: (fp := broker.secret_fingerprint()) != old and fp, timeout=120,
                             what="cert-manager reissued the certificate")
            # New connections to every pod see the new certificate within the kubelet propagation time
            # plus a margin.
            wait_until(lambda: served_by_each_pod(broker) == {new}, timeout=KUBELET_PROPAGATION_SECONDS +
                       MARGIN_SECONDS, interval=2, what="new certificate served by every pod")
            assert early.is_connected()
            assert sessions == {"connects": 1, "disconnects": 0}
            publisher = broker.mqtt_client(forward.port, "late-publisher", mutual=False)
            publisher.connect("127.0.0.1", forward.port)
            publisher.loop_start()
            payload = wait_until(lambda: (publisher.publish("e2e/renewal", b"after", qos=1).wait_for_publish(5),
                                          received.get(timeout=1))[1], timeout=60, what="early subscriber receives")
            assert payload == b"after"
            assert sessions == {"connects": 1, "disconnects": 0}
            publisher.disconnect()
            publisher.loop_stop()
        finally:
            early.disconnect()
            early.loop_stop()
    pods_after = broker.pods()
    assert pod_uids(pods_after) == pod_uids(pods_before)
    assert restart_counts(pods_after) == restart_counts(pods_before)
    # The status reports the new certificate (the operator records it once every pod serves it).
    wait_until(lambda: [l.get("fingerprint") for l in broker.resource()["status"].get("listeners", [])] == [new],
               timeout=120, what="status shows the new fingerprint")


def mismatched_tls_material() -> dict[str, str]:
    """A certificate and a private key that does not belong to it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(cert_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1)).sign(cert_key, hashes.SHA256()))
    return {"tls.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "tls.key": other_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()).decode()}


def test_invalid_certificate_keeps_the_old_one_serving(broker: Broker) -> None:
    k = broker.k
    serving = broker.secret_fingerprint()
    # Stop cert-manager from repairing the Secret (the Secret itself stays), then break it.
    k.run("-n", NAMESPACE, "delete", "certificate", "e2e-server")
    bad = mismatched_tls_material()
    k.run("-n", NAMESPACE, "patch", "secret", "e2e-server", "--type=merge", "-p", json.dumps(
        {"data": {key: base64.b64encode(value.encode()).decode() for key, value in bad.items()}}))
    refused = wait_until(lambda: (c := condition(broker.resource(), "CertificatesReady")) and
                         c["status"] == "False" and c, timeout=120, what="CertificatesReady=False")
    assert refused["message"], refused
    (listener,) = broker.resource()["status"]["listeners"]
    assert listener.get("lastError"), listener
    # Give the kubelet time to put the bad files in place; the old certificate must still be served.
    with k.port_forward(NAMESPACE, f"svc/{BROKER}", PORT) as forward:
        seen = set()
        deadline = datetime.now(timezone.utc) + timedelta(seconds=KUBELET_PROPAGATION_SECONDS)
        while datetime.now(timezone.utc) < deadline:
            seen.add(served_fingerprint(forward.port, tls_context(broker.ca_pem), "127.0.0.1"))
            time.sleep(5)
        assert seen == {serving}
    assert served_by_each_pod(broker) == {serving}


def test_clean_uninstall(broker: Broker) -> None:
    k = broker.k
    k.run("-n", NAMESPACE, "delete", "mqttbroker", BROKER, "--wait", "--timeout=180s")
    # Owned objects go through the garbage collector, which takes a moment.
    wait_until(lambda: k.get("-n", NAMESPACE, "statefulsets,services,configmaps,poddisruptionbudgets,pods",
                             "-l", selector_string(BROKER))["items"] == [], timeout=180,
               what="the broker's objects are gone")
    helm = run(str(ROOT / "tools" / "helm" / "ensure-helm.sh")).strip()
    run(helm, "--kubeconfig", str(k.kubeconfig), "uninstall", "wharf", "--namespace", "wharf-system", "--wait")
    left = k.get("-n", "wharf-system", "all,serviceaccounts", "-l", "app.kubernetes.io/instance=wharf")["items"]
    assert left == []
    cluster_left = k.get("clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/instance=wharf")["items"]
    assert cluster_left == []
    # helm never deletes CRDs it installed from crds/ (that would delete every MQTTBroker); it is still served.
    assert k.get("crd", "mqttbrokers.mqtt.wharf.dev")["metadata"]["name"] == "mqttbrokers.mqtt.wharf.dev"
