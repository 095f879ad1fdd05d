"""End to end, without kind: the real operator, real broker processes for the Pods kwok runs
(the harness plays the kubelet), real MQTT clients over TLS and mTLS, and a certificate rotation
written into the Secret the way cert-manager writes it; then a client-CA bundle that would lock out the
connected mTLS clients (held, then forced) and invalid material (refused).

Measured and printed: ``rotation latency: p50=<s>s max=<s>s`` from the Secret update until each
broker's listener serves the new certificate (every Pod, both listeners)."""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubelet_harness import KubeletHarness
from operator_support import install_operator_identity, pinned_helm, running_operator
from realapi_support import is_test_pod_ip, wait_for

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
CRD_NAME = f"{PLURAL}.{GROUP}"
BROKER = "rotor"
REPLICAS = 2
LISTENERS = {"tls": 8883, "mtls": 8884}
ROTATIONS = 3
TOPIC = "e2e/rotation"


# --- certificates, as cert-manager would write them --------------------------------------------

@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=10))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, common_name: str, usage, *, expired: bool = False
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = ((now - datetime.timedelta(days=3), now - datetime.timedelta(days=1)) if expired
                                 else (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(not_before)
                .not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return key, cert


def pem(obj) -> str:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def tls_secret_data(authority: Authority, key, cert) -> dict:
    return {"tls.crt": pem(cert), "tls.key": pem(key), "ca.crt": pem(authority.cert)}


# --- what a broker serves -----------------------------------------------------------------------

class Probe:
    """TLS handshakes (with a client certificate, which the mTLS listener demands)."""

    def __init__(self, workdir: Path, server_ca: Authority, client_key, client_cert) -> None:
        (workdir / "probe-ca.crt").write_text(pem(server_ca.cert))
        (workdir / "probe-client.crt").write_text(pem(client_cert))
        (workdir / "probe-client.key").write_text(pem(client_key))
        self.context = ssl.create_default_context(cafile=str(workdir / "probe-ca.crt"))
        self.context.check_hostname = False  # brokers are reached by Pod IP; the chain is still verified
        self.context.load_cert_chain(str(workdir / "probe-client.crt"), str(workdir / "probe-client.key"))
        self.client_files = (str(workdir / "probe-ca.crt"), str(workdir / "probe-client.crt"),
                             str(workdir / "probe-client.key"))

    def served(self, ip: str, port: int) -> str | None:
        """SHA-256 of the leaf certificate served at ip:port, or None when no handshake succeeds."""
        assert is_test_pod_ip(ip), ip
        try:
            with socket.create_connection((ip, port), timeout=3) as raw, \
                    self.context.wrap_socket(raw) as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
        except (OSError, ssl.SSLError):
            return None


# --- MQTT clients that must survive the rotation ------------------------------------------------

@dataclass
class HeldClient:
    label: str
    client: mqtt.Client
    disconnects: list[str] = field(default_factory=list)
    received: set[bytes] = field(default_factory=set)
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)


def held_client(label: str, ip: str, port: int, probe: Probe) -> HeldClient:
    context = ssl.create_default_context(cafile=probe.client_files[0])
    context.check_hostname = False
    context.load_cert_chain(probe.client_files[1], probe.client_files[2])
    return subscribed_client(label, ip, port, context)


def subscribed_client(label: str, ip: str, port: int, context: ssl.SSLContext) -> HeldClient:
    """An MQTT 3.1.1 client over TLS that subscribes to TOPIC and records what it gets and every disconnection."""
    assert is_test_pod_ip(ip), ip
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=label, protocol=mqtt.MQTTv311)
    client.tls_set_context(context)
    held = HeldClient(label, client)

    def on_connect(_client, _userdata, _flags, reason_code, _properties):
        if not reason_code.is_failure:
            held.connected.set()
            _client.subscribe(TOPIC, qos=1)

    def on_subscribe(_client, _userdata, _mid, reason_codes, _properties):
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            held.disconnects.append(f"subscription refused: {refused}")
        held.subscribed.set()

    def on_disconnect(_client, _userdata, _flags, reason_code, _properties):
        held.disconnects.append(str(reason_code))

    def on_message(_client, _userdata, message):
        held.received.add(message.payload)

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_disconnect, client.on_message = on_disconnect, on_message
    client.connect(ip, port, keepalive=30)
    client.loop_start()
    return held


def publish_stream(publishers: dict[str, HeldClient], stop: threading.Event, limit: int) -> dict[str, list[bytes]]:
    """Publish QoS 1 messages on every broker until ``stop`` (at most ``limit`` per broker);
    return what each broker's publisher had acknowledged (PUBACK)."""
    acknowledged: dict[str, list[bytes]] = {pod: [] for pod in publishers}
    for sequence in range(limit):
        if stop.is_set():
            break
        for pod, publisher in publishers.items():
            payload = f"{pod}:{sequence}".encode()
            info = publisher.client.publish(TOPIC, payload, qos=1)
            info.wait_for_publish(timeout=10)
            if info.is_published():
                acknowledged[pod].append(payload)
        time.sleep(0.02)
    return acknowledged


# --- the test -----------------------------------------------------------------------------------

def create_rotor_secrets(core, namespace: str, authority: Authority, client_name: str,
                         tmp_path) -> tuple[x509.Certificate, Probe]:
    """The Secrets of ``_broker_body``'s listeners, both from ``authority``: the server certificate (rotor-tls)
    and the client-CA bundle (rotor-client-ca). The first server certificate, and a probe holding a client
    certificate of ``client_name``."""
    first_key, first_cert = authority.issue("rotor.e2e.test", ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = authority.issue(client_name, ExtendedKeyUsageOID.CLIENT_AUTH)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "rotor-tls"}, "type": "kubernetes.io/tls",
                                              "stringData": tls_secret_data(authority, first_key, first_cert)})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "rotor-client-ca"},
                                              "stringData": {"ca.crt": pem(authority.cert)}})
    return first_cert, Probe(tmp_path, authority, client_key, client_cert)


def _broker_body() -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": BROKER},
        # Clients here are anonymous and may use any topic: this test is about certificates.
        "spec": {"replicas": REPLICAS, "image": "wharf:e2e", "authentication": {"allowAnonymous": True},
                 "authorization": {"noMatch": "allow"},
                 "listeners": [
            {"name": "tls", "type": "ssl", "port": LISTENERS["tls"], "tls": {"secretName": "rotor-tls"}},
            {"name": "mtls", "type": "ssl", "port": LISTENERS["mtls"],
             "tls": {"secretName": "rotor-tls", "verify": "verify_peer", "failIfNoPeerCert": True,
                     "caRef": {"kind": "Secret", "name": "rotor-client-ca", "key": "ca.crt"}}},
        ]},
    }


def _status(brokers, namespace: str) -> dict:
    return brokers.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, BROKER).get("status") or {}


def _listener_status(status: dict, name: str) -> dict:
    return next((entry for entry in status.get("listeners") or [] if entry.get("name") == name), {})


def _events(core, namespace: str, reason: str) -> list:
    return [e for e in core.list_namespaced_event(namespace).items
            if e.involved_object.name == BROKER and e.reason == reason]


@pytest.mark.timeout(600)
def test_certificate_rotation_end_to_end(controlplane, api, mqttbroker_crd, namespace, tmp_path):
    core = kubernetes.client.CoreV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)

    # One internal CA issues the brokers' and the clients' certificates (the mTLS listener's caRef).
    # The operator checks that a listener's certificate chains to its caRef bundle, so a separate
    # client CA would be refused for the mTLS listener (the broker itself would only warn).
    server_ca = Authority.create("e2e-ca")
    first_cert, probe = create_rotor_secrets(core, namespace, server_ca, "e2e-client", tmp_path)

    (tmp_path / "helm-home").mkdir()
    kubeconfig, _, _ = install_operator_identity(controlplane, api, pinned_helm(), tmp_path / "helm-home",
                                                 tmp_path, watch=[namespace])
    operator_log = tmp_path / "operator.log"
    selector = f"app.kubernetes.io/instance={BROKER}"
    with running_operator(kubeconfig, operator_log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr), \
            KubeletHarness(api, namespace, selector, tmp_path / "pods") as kubelet:
        brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _broker_body())

        # Every Pod runs a real broker on its loopback Pod IP, serving the first certificate.
        first = fingerprint(first_cert)
        pods = wait_for(lambda: (running := kubelet.running()) and len(running) == REPLICAS and running,
                        f"{REPLICAS} broker processes", timeout=120)
        targets = [(pod.name, pod.ip, listener, port) for pod in pods.values() for listener, port in LISTENERS.items()]
        for name, ip, listener, port in targets:
            wait_for(lambda ip=ip, port=port: probe.served(ip, port) == first,
                     f"{name} {listener} serving the first certificate", timeout=60)
        assert not kubelet.errors, kubelet.errors

        # Held connections: a subscriber on each listener of each Pod, one publisher per Pod.
        subscribers = {(pod.name, listener): held_client(f"sub-{pod.name}-{listener}", pod.ip, port, probe)
                       for pod in pods.values() for listener, port in LISTENERS.items()}
        publishers = {pod.name: held_client(f"pub-{pod.name}", pod.ip, LISTENERS["tls"], probe)
                      for pod in pods.values()}
        held = [*subscribers.values(), *publishers.values()]
        for client in held:
            assert client.connected.wait(30) and client.subscribed.wait(30), client.label
            assert client.disconnects == [], f"{client.label}: {client.disconnects}"

        # The operator has seen the first material (status), before anything rotates.
        wait_for(lambda: _listener_status(_status(brokers, namespace), "tls").get("fingerprint") == first,
                 "status to show the first fingerprint", timeout=60)

        stop_publishing = threading.Event()
        acknowledged: dict[str, list[bytes]] = {}
        publisher_thread = threading.Thread(
            target=lambda: acknowledged.update(publish_stream(publishers, stop_publishing, limit=3000)))
        publisher_thread.start()
        time.sleep(0.5)  # some traffic before the rotation too

        # Rotate a few times: each time a new key and certificate from the same CA, written in one
        # Secret update; measure until every listener of every Pod serves it.
        latencies: list[float] = []
        for _ in range(ROTATIONS):
            next_key, next_cert = server_ca.issue("rotor.e2e.test", ExtendedKeyUsageOID.SERVER_AUTH)
            current = fingerprint(next_cert)
            rotated_at = time.monotonic()
            core.patch_namespaced_secret("rotor-tls", namespace,
                                         {"stringData": tls_secret_data(server_ca, next_key, next_cert)})
            latency: dict[tuple[str, str], float] = {}
            deadline = rotated_at + 60
            while len(latency) < len(targets) and time.monotonic() < deadline:
                for name, ip, listener, port in targets:
                    if (name, listener) not in latency and probe.served(ip, port) == current:
                        latency[(name, listener)] = time.monotonic() - rotated_at
                time.sleep(0.05)
            missing = [(name, listener) for name, _, listener, _ in targets if (name, listener) not in latency]
            assert not missing, (f"never served the new certificate: {missing}\n"
                                 f"status: {_status(brokers, namespace)}\n{operator_log.read_text()[-3000:]}")
            latencies.extend(latency.values())

            # Status and events tell the story (and the next rotation starts from a settled state).
            status = wait_for(lambda fp=current: (s := _status(brokers, namespace))
                              and all(_listener_status(s, name).get("fingerprint") == fp for name in LISTENERS) and s,
                              "status to show the new fingerprint", timeout=60)
            for listener in LISTENERS:
                record = _listener_status(status, listener)
                assert record.get("lastRotationTime") and record.get("lastRotationSeconds") is not None, record
                assert record.get("podsServing") == REPLICAS and not record.get("lastError"), record
        time.sleep(0.5)  # some traffic after the rotations too
        stop_publishing.set()
        publisher_thread.join(60)
        print(f"\nrotation latency: p50={statistics.median(latencies):.3f}s max={max(latencies):.3f}s "
              f"({ROTATIONS} rotations x {len(targets)} listeners on {REPLICAS} pods)")
        assert len(_events(core, namespace, "CertificateRotated")) >= ROTATIONS

        # Zero dropped connections, zero lost QoS 1 messages.
        for pod, sent in acknowledged.items():
            assert sent, f"nothing was published on {pod}"
            for listener in LISTENERS:
                subscriber = subscribers[(pod, listener)]
                wait_for(lambda s=subscriber, sent=sent: set(sent) <= s.received,
                         f"{subscriber.label} to receive every acknowledged message", timeout=30)
        for client in held:
            assert client.disconnects == [], f"{client.label} was disconnected: {client.disconnects}"
            assert client.client.is_connected(), client.label

        # A client-CA bundle that would lock out the connected mTLS subscribers (it drops their CA) is held: no pod
        # is signalled, status and a Warning event say how many and whose; the annotation naming the bundle's
        # SHA-256 forces it (the brokers then load it when their files carry it).
        next_client_ca = pem(Authority.create("e2e-next-client-ca").cert)
        core.patch_namespaced_secret("rotor-client-ca", namespace, {"stringData": {"ca.crt": next_client_ca}})
        held_status = wait_for(lambda: (s := _status(brokers, namespace))
                               and _listener_status(s, "mtls").get("reason") == "ClientCAWouldLockOut" and s,
                               "the new client-CA bundle held", timeout=60)
        message = _listener_status(held_status, "mtls")["lastError"]
        assert f"{REPLICAS} connected client(s)" in message and "CN=e2e-ca" in message, message
        assert _events(core, namespace, "ClientCAWouldLockOut")
        digest = hashlib.sha256(next_client_ca.encode()).hexdigest()
        assert digest in message
        brokers.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, BROKER, {
            "metadata": {"annotations": {"mqtt.wharf.dev/force-client-ca": digest}}})
        wait_for(lambda: (s := _status(brokers, namespace)) and not _listener_status(s, "mtls").get("reason")
                 and _listener_status(s, "mtls").get("podsServing") == REPLICAS,
                 "the forced client-CA bundle signalled", timeout=60)
        assert _events(core, namespace, "ClientCAForced")
        for client in held:
            assert client.disconnects == [], f"{client.label} was disconnected: {client.disconnects}"

        # Invalid material is refused and never served: a key that belongs to another certificate,
        # then an expired certificate. The Pods' projected files hold it; they keep serving `current`.
        wrong_key, _ = server_ca.issue("rotor.e2e.test", ExtendedKeyUsageOID.SERVER_AUTH)
        _, mismatched_cert = server_ca.issue("rotor.e2e.test", ExtendedKeyUsageOID.SERVER_AUTH)
        expired_key, expired_cert = server_ca.issue("rotor.e2e.test", ExtendedKeyUsageOID.SERVER_AUTH, expired=True)
        invalid = [("mismatched key", tls_secret_data(server_ca, wrong_key, mismatched_cert), "does not match"),
                   ("expired", tls_secret_data(server_ca, expired_key, expired_cert), "expired (")]
        for label, data, refusal in invalid:
            core.patch_namespaced_secret("rotor-tls", namespace, {"stringData": data})
            refused_at, checks = None, 0
            settle_until = time.monotonic() + 120
            while time.monotonic() < settle_until:
                for name, ip, listener, port in targets:
                    served = probe.served(ip, port)
                    assert served == current, f"{label}: {name} {listener} serves {served}, not the valid certificate"
                    checks += 1
                status = _status(brokers, namespace)
                if refused_at is None and all(refusal in (_listener_status(status, name).get("lastError") or "")
                                              for name in LISTENERS):
                    # Keep checking a while after the refusal: by then the projected files are the bad ones.
                    refused_at = time.monotonic()
                    settle_until = refused_at + 3 * kubelet.sync_interval + 3
                time.sleep(0.1)
            assert refused_at is not None, (f"{label}: not refused in status: {_status(brokers, namespace)}\n"
                                            f"{operator_log.read_text()[-3000:]}")
            assert checks >= len(targets) * 5
        assert _events(core, namespace, "CertificateRefused")
        for client in held:
            assert client.disconnects == [], f"{client.label} was disconnected: {client.disconnects}"
            client.client.disconnect()
            client.client.loop_stop()
        assert not kubelet.errors, kubelet.errors
