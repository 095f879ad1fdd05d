"""End to end with the real cert-manager controller issuing and renewing the brokers' certificate.

A self-signed ClusterIssuer issues a CA Certificate, a CA Issuer made from it issues the Certificate
of an MQTTBroker's TLS listener with ``duration: 1h`` and ``renewBefore: 59m50s``, so cert-manager
renews it (a new key, a new serial) about every ten seconds while the test runs. The real operator
signals the Pods on each renewal; the Pods are real broker processes (tests/realapi/kubelet_harness.py)
under QoS 1 traffic from TLS publishers.

Measured and printed: ``cert-manager rotation latency: hop=listener p50=<s>s max=<s>s``, from the
watch event of cert-manager's write of the renewed Secret until each Pod's listener serves that
renewal's serial. Asserted: every renewal's serial is served by every Pod, no connection drops, no
acknowledged QoS 1 message is lost.

A second test points the listener's Certificate at another CA Issuer: cert-manager writes that CA as the Secret's
ca.crt, so only a trust anchor the issuer does not write (``tls.trustedIssuerCARef``, a ConfigMap with the right
CA) can refuse it. Asserted: CertificatesReady=False with ChainUntrusted, a CertificateRefused Event, every Pod
still serving the first serial, and no held connection dropped."""

from __future__ import annotations

import base64
import queue
import socket
import ssl
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest
from certmanager_support import GROUP as CM_GROUP
from certmanager_support import VERSION as CM_VERSION
from certmanager_support import certificate_ready
from cryptography import x509
from kubelet_harness import KubeletHarness
from operator_support import install_operator_identity, pinned_helm, running_operator
from realapi_support import is_test_pod_ip, unique_name, wait_for
from test_rotation_e2e import GROUP, PLURAL, VERSION, HeldClient, publish_stream, subscribed_client


BROKER = "certy"
REPLICAS = 2
PORT = 8883
RENEWALS = 4
SECRET = "certy-tls"


def _serial(cert_pem: str | bytes) -> int:
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    return x509.load_pem_x509_certificates(data)[0].serial_number


def _secret_text(core, namespace: str, name: str, key: str) -> str:
    return base64.b64decode(core.read_namespaced_secret(name, namespace).data[key]).decode()


# --- cert-manager objects ------------------------------------------------------------------------

def _ca_and_issuer(namespace: str, name: str, common_name: str, cluster_issuer: str) -> list[tuple[str, dict]]:
    """(plural, body): a CA Certificate issued by the self-signed ClusterIssuer into Secret ``name``, and the CA
    Issuer ``name`` that signs with it."""
    api_version = f"{CM_GROUP}/{CM_VERSION}"
    meta = {"name": name, "namespace": namespace}
    return [
        ("certificates", {"apiVersion": api_version, "kind": "Certificate", "metadata": meta,
                          "spec": {"isCA": True, "commonName": common_name, "secretName": name,
                                   "duration": "24h", "privateKey": {"algorithm": "ECDSA", "size": 256},
                                   "issuerRef": {"kind": "ClusterIssuer", "name": cluster_issuer,
                                                 "group": CM_GROUP}}}),
        ("issuers", {"apiVersion": api_version, "kind": "Issuer", "metadata": dict(meta),
                     "spec": {"ca": {"secretName": name}}}),
    ]


def _issuers_and_certificates(namespace: str, cluster_issuer: str) -> list[tuple[str, dict]]:
    """(plural, body): the self-signed ClusterIssuer, the CA Certificate, the CA Issuer, the listener's
    Certificate."""
    meta = {"namespace": namespace}
    api_version = f"{CM_GROUP}/{CM_VERSION}"
    return [
        ("clusterissuers", {"apiVersion": api_version, "kind": "ClusterIssuer", "metadata": {"name": cluster_issuer},
                            "spec": {"selfSigned": {}}}),
        *_ca_and_issuer(namespace, "certy-ca", "certy e2e CA", cluster_issuer),
        ("certificates", {"apiVersion": api_version, "kind": "Certificate", "metadata": {"name": SECRET, **meta},
                          # Renewed 10 s after each issuance (1h - 59m50s), with a new key each time.
                          "spec": {"secretName": SECRET, "commonName": f"{BROKER}.e2e.test",
                                   "dnsNames": [f"{BROKER}.e2e.test"], "duration": "1h", "renewBefore": "59m50s",
                                   "usages": ["server auth", "digital signature", "key encipherment"],
                                   "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                                   "issuerRef": {"kind": "Issuer", "name": "certy-ca", "group": CM_GROUP}}}),
    ]


def _broker_body(tls: dict | None = None) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": BROKER},
        "spec": {"replicas": REPLICAS, "image": "wharf:e2e", "authentication": {"allowAnonymous": True},
                 "authorization": {"noMatch": "allow"},
                 "listeners": [{"name": "tls", "type": "ssl", "port": PORT,
                                "tls": {"secretName": SECRET, **(tls or {})}}]},
    }


# --- watching cert-manager's writes --------------------------------------------------------------

@dataclass
class SecretWrite:
    at: float  # time.monotonic() when the watch event arrived
    serial: int


class SecretWatch:
    """A watch on one Secret in a thread: every write that changes the leaf's serial, with its arrival time."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.namespace, self.name = namespace, name
        self.writes: queue.Queue[SecretWrite] = queue.Queue()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._last_serial: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SecretWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(self.core.list_namespaced_secret, self.namespace,
                                          field_selector=f"metadata.name={self.name}", timeout_seconds=5):
                    arrived = time.monotonic()
                    data = event["object"].data or {}
                    if "tls.crt" in data:
                        serial = _serial(base64.b64decode(data["tls.crt"]))
                        if serial != self._last_serial:
                            self._last_serial = serial
                            self.writes.put(SecretWrite(arrived, serial))
                    if self._stop.is_set():
                        break
            except Exception as error:  # noqa: BLE001 - recorded and asserted on by the test
                self.errors.append(repr(error))
                self._stop.wait(0.5)
            finally:
                watch.stop()


# --- clients -------------------------------------------------------------------------------------

class Probe:
    """TLS handshakes verified against cert-manager's CA: the serial of the leaf served at ip:port."""

    def __init__(self, ca_file: Path) -> None:
        self.ca_file = ca_file
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.context.check_hostname = False  # brokers are reached by Pod IP; the chain is still verified

    def served(self, ip: str, port: int) -> int | None:
        assert is_test_pod_ip(ip), ip
        try:
            with socket.create_connection((ip, port), timeout=3) as raw, self.context.wrap_socket(raw) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
        except (OSError, ssl.SSLError):
            return None


def tls_client(label: str, ip: str, probe: Probe) -> HeldClient:
    context = ssl.create_default_context(cafile=str(probe.ca_file))
    context.check_hostname = False
    return subscribed_client(label, ip, PORT, context)


# --- the test ------------------------------------------------------------------------------------

def _create(custom, namespace: str, objects) -> None:
    """Create cert-manager objects given as (plural, body): ClusterIssuers cluster-wide, the rest in ``namespace``."""
    for plural, body in objects:
        if plural == "clusterissuers":
            custom.create_cluster_custom_object(CM_GROUP, CM_VERSION, plural, body)
        else:
            custom.create_namespaced_custom_object(CM_GROUP, CM_VERSION, namespace, plural, body)


@pytest.mark.timeout(600)
def test_cert_manager_renewals_reach_every_pod(controlplane, api, cert_manager, mqttbroker_crd, namespace, tmp_path):
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    cluster_issuer = unique_name("selfsigned")
    _create(custom, namespace, _issuers_and_certificates(namespace, cluster_issuer))
    try:
        _run(core, custom, api, controlplane, cert_manager, namespace, tmp_path)
    finally:
        custom.delete_cluster_custom_object(CM_GROUP, CM_VERSION, "clusterissuers", cluster_issuer)


def _run(core, custom, api, controlplane, cert_manager_log: Path, namespace: str, tmp_path: Path) -> None:
    def log_tail() -> str:
        return f"cert-manager log:\n{cert_manager_log.read_text(errors='replace')[-3000:]}"

    wait_for(lambda: certificate_ready(custom, namespace, "certy-ca"), f"the CA Certificate Ready\n{log_tail()}",
             timeout=60)
    wait_for(lambda: certificate_ready(custom, namespace, SECRET), f"the listener Certificate Ready\n{log_tail()}",
             timeout=60)
    ca_pem = _secret_text(core, namespace, "certy-ca", "tls.crt")
    assert _secret_text(core, namespace, SECRET, "ca.crt") == ca_pem  # the CA Issuer's chain
    (tmp_path / "ca.crt").write_text(ca_pem)
    probe = Probe(tmp_path / "ca.crt")

    (tmp_path / "helm-home").mkdir()
    kubeconfig, _, _ = install_operator_identity(controlplane, api, pinned_helm(), tmp_path / "helm-home",
                                                 tmp_path, watch=[namespace])
    operator_log = tmp_path / "operator.log"
    selector = f"app.kubernetes.io/instance={BROKER}"
    with SecretWatch(api, namespace, SECRET) as writes, \
            running_operator(kubeconfig, operator_log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr), \
            KubeletHarness(api, namespace, selector, tmp_path / "pods") as kubelet:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _broker_body())
        pods = wait_for(lambda: (running := kubelet.running()) and len(running) == REPLICAS and running,
                        f"{REPLICAS} broker processes", timeout=120)
        targets = [(pod.name, pod.ip) for pod in pods.values()]
        # Every Pod serves one of cert-manager's certificates (it renews every ~10 s meanwhile).
        for name, ip in targets:
            wait_for(lambda ip=ip: probe.served(ip, PORT) is not None, f"{name} serving TLS", timeout=60)
        assert not kubelet.errors, kubelet.errors

        subscribers = {pod.name: tls_client(f"sub-{pod.name}", pod.ip, probe) for pod in pods.values()}
        publishers = {pod.name: tls_client(f"pub-{pod.name}", pod.ip, probe) for pod in pods.values()}
        held = [*subscribers.values(), *publishers.values()]
        for client in held:
            assert client.connected.wait(30) and client.subscribed.wait(30), client.label
            assert client.disconnects == [], f"{client.label}: {client.disconnects}"

        stop_publishing = threading.Event()
        acknowledged: dict[str, list[bytes]] = {}
        publisher_thread = threading.Thread(
            target=lambda: acknowledged.update(publish_stream(publishers, stop_publishing, limit=5000)))
        publisher_thread.start()

        # Measure the next renewals from their Secret write, each until every Pod serves its serial.
        while not writes.writes.empty():  # writes before the measurement starts
            writes.writes.get_nowait()
        latencies: list[float] = []
        serials: list[int] = []
        try:
            for _ in range(RENEWALS):
                write = writes.writes.get(timeout=60)
                assert write.serial not in serials
                serials.append(write.serial)
                latency: dict[str, float] = {}
                deadline = write.at + 30
                while len(latency) < len(targets) and time.monotonic() < deadline:
                    for name, ip in targets:
                        if name not in latency and probe.served(ip, PORT) == write.serial:
                            latency[name] = time.monotonic() - write.at
                    time.sleep(0.05)
                missing = [name for name, _ in targets if name not in latency]
                assert not missing, (f"renewal {write.serial:x} never served by {missing}\n"
                                     f"{operator_log.read_text()[-3000:]}\n{log_tail()}")
                latencies.extend(latency.values())
        finally:
            stop_publishing.set()
            publisher_thread.join(60)
        assert not writes.errors, writes.errors
        print(f"\ncert-manager rotation latency: hop=listener p50={statistics.median(latencies):.3f}s "
              f"max={max(latencies):.3f}s ({RENEWALS} renewals x {REPLICAS} pods)")

        # The operator recorded each renewal (status and Events).
        rotated = [e for e in core.list_namespaced_event(namespace).items
                   if e.involved_object.name == BROKER and e.reason == "CertificateRotated"]
        assert len(rotated) >= RENEWALS, [e.message for e in rotated]

        # Zero dropped connections, zero lost QoS 1 messages.
        for pod, sent in acknowledged.items():
            assert sent, f"nothing was published on {pod}"
            subscriber = subscribers[pod]
            wait_for(lambda s=subscriber, sent=sent: set(sent) <= s.received,
                     f"{subscriber.label} to receive every acknowledged message", timeout=30)
        for client in held:
            assert client.disconnects == [], f"{client.label} was disconnected: {client.disconnects}"
            assert client.client.is_connected(), client.label
            client.client.disconnect()
            client.client.loop_stop()
        assert not kubelet.errors, kubelet.errors


# --- a renewal from the wrong CA -----------------------------------------------------------------

def _wrong_ca_objects(namespace: str, cluster_issuer: str) -> list[tuple[str, dict]]:
    """The same chain as above (the listener's Certificate without the fast renewal), plus a second CA
    and its Issuer, which the listener's Certificate is later pointed at."""
    objects = _issuers_and_certificates(namespace, cluster_issuer)
    listener = objects[-1][1]
    listener["spec"].pop("renewBefore")
    objects[-1:-1] = _ca_and_issuer(namespace, "wrong-ca", "wrong e2e CA", cluster_issuer)
    return objects


TRUST = "certy-issuer-trust"


@pytest.mark.timeout(400)
def test_cert_manager_renewal_from_a_wrong_ca_is_refused(controlplane, api, cert_manager, mqttbroker_crd, namespace,
                                                         tmp_path):
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    cluster_issuer = unique_name("selfsigned")
    _create(custom, namespace, _wrong_ca_objects(namespace, cluster_issuer))
    try:
        for name in ("certy-ca", "wrong-ca", SECRET):
            wait_for(lambda name=name: certificate_ready(custom, namespace, name), f"Certificate {name} Ready",
                     timeout=60)
        ca_pem = _secret_text(core, namespace, "certy-ca", "tls.crt")
        (tmp_path / "ca.crt").write_text(ca_pem)
        probe = Probe(tmp_path / "ca.crt")
        first = _serial(_secret_text(core, namespace, SECRET, "tls.crt"))
        # The pinned issuer CA: a ConfigMap holding only the CA's certificate (as a trust-manager Bundle would),
        # which no issuer writes; the listener's Secret carries whatever CA its issuer has as ca.crt.
        core.create_namespaced_config_map(namespace, {"metadata": {"name": TRUST}, "data": {"ca.crt": ca_pem}})

        (tmp_path / "helm-home").mkdir()
        kubeconfig, _, _ = install_operator_identity(controlplane, api, pinned_helm(), tmp_path / "helm-home",
                                                     tmp_path, watch=[namespace])
        operator_log = tmp_path / "operator.log"
        with running_operator(kubeconfig, operator_log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr), \
                KubeletHarness(api, namespace, f"app.kubernetes.io/instance={BROKER}", tmp_path / "pods") as kubelet:
            body = _broker_body({"trustedIssuerCARef": {"kind": "ConfigMap", "name": TRUST}})
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            pods = wait_for(lambda: (running := kubelet.running()) and len(running) == REPLICAS and running,
                            f"{REPLICAS} broker processes", timeout=120)
            targets = [(pod.name, pod.ip) for pod in pods.values()]
            for name, ip in targets:
                wait_for(lambda ip=ip: probe.served(ip, PORT) == first, f"{name} serving the first certificate",
                         timeout=60)
            # A connection held on every Pod through the refusal.
            held = [tls_client(f"held-{pod.name}", pod.ip, probe) for pod in pods.values()]
            for client in held:
                assert client.connected.wait(30) and client.subscribed.wait(30), client.label

            # Point the listener's Certificate at the wrong CA: cert-manager reissues from it.
            custom.patch_namespaced_custom_object(CM_GROUP, CM_VERSION, namespace, "certificates", SECRET,
                                                  {"spec": {"issuerRef": {"name": "wrong-ca"}}})
            wrong_ca_pem = _secret_text(core, namespace, "wrong-ca", "tls.crt")
            (tmp_path / "wrong-ca.crt").write_text(wrong_ca_pem)
            wrong_probe = Probe(tmp_path / "wrong-ca.crt")
            wrong_subject = x509.load_pem_x509_certificate(wrong_ca_pem.encode()).subject
            wait_for(lambda: x509.load_pem_x509_certificate(
                _secret_text(core, namespace, SECRET, "tls.crt").encode()).issuer == wrong_subject,
                "cert-manager to write the wrong CA's certificate", timeout=60)

            # Refused (status and Event), and the Pods keep serving the first certificate well past the time
            # a valid renewal takes to reach them (the operator's reload wait and a few volume syncs).
            settle_until = time.monotonic() + 5 + 3 * kubelet.sync_interval + 5
            while time.monotonic() < settle_until:
                for name, ip in targets:
                    served = probe.served(ip, PORT)
                    assert served == first, (
                        f"{name} no longer serves the first certificate {first:x} (served: {served}); the wrong CA's "
                        f"certificate is served: {wrong_probe.served(ip, PORT)}\n{operator_log.read_text()[-2000:]}")
                time.sleep(0.2)
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, BROKER).get("status", {})
            listener = next(entry for entry in status.get("listeners") or [] if entry.get("name") == "tls")
            assert "ChainUntrusted" in listener.get("lastError", ""), status
            condition = next(c for c in status.get("conditions") or [] if c["type"] == "CertificatesReady")
            assert condition["status"] == "False" and "ChainUntrusted" in condition["message"], condition
            refused = [e for e in core.list_namespaced_event(namespace).items
                       if e.involved_object.name == BROKER and e.reason == "CertificateRefused"]
            assert refused and "ChainUntrusted" in refused[0].message, [e.message for e in refused]
            for client in held:
                assert client.disconnects == [], f"{client.label} was disconnected: {client.disconnects}"
                assert client.client.is_connected(), client.label
                client.client.disconnect()
                client.client.loop_stop()
            assert not kubelet.errors, kubelet.errors
    finally:
        custom.delete_cluster_custom_object(CM_GROUP, CM_VERSION, "clusterissuers", cluster_issuer)
