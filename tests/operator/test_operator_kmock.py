"""The real kopf operator, in-process, against kmock's emulated Kubernetes API; broker pods are real HTTP
servers on 127.0.0.x playing the admin API.

kmock quirks handled here: ``v1/namespaces`` is declared, objects get ``resourceVersion`` and ``uid``, and
objects are created only after the operator's watches are open. kmock does no defaulting, validation or
garbage collection; the real-API suite covers those.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import threading
import time
from typing import Any

import kmock as kmock_lib
import kopf
import pytest
from kmock_support import FakeBrokerPod, VersioningEmulator, declare_resources
from operator_pki import make_ca, make_leaf, secret_data, tls_secret
from wharf_operator import render, resources
from wharf_operator.controller import Controller, OperatorConfig
from wharf_operator.crd import PAUSE_ANNOTATION, defaulted_spec
from wharf_operator.handlers import build_registry
from wharf_operator.kube import CONFIGMAPS, SECRETS, KubeApi, Resource
from wharf_operator.signalling import LOOPBACK_ONLY, BrokerAdmin

from tests.support import eventually

NS = "wharf-test"
BROKERS = Resource("mqtt.wharf.dev", "v1alpha1", "mqttbrokers")

pytestmark = pytest.mark.kmock(cls=VersioningEmulator)

class RecordingKubeApi(KubeApi):
    """The operator's API client, recording every write it makes."""

    def __init__(self, server: str) -> None:
        super().__init__(server)
        self.writes: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method != "GET":
            self.writes.append((method, path))
        return await super().request(method, path, **kwargs)


class Env:
    def __init__(self, kmock, api: RecordingKubeApi, client: KubeApi, controller: Controller) -> None:
        self.kmock, self.api, self.client, self.controller = kmock, api, client, controller
        self.pods: list[FakeBrokerPod] = []
        self.ca = make_ca()
        self.leaf = make_leaf(self.ca)

    def obj(self, resource: str, name: str) -> dict | None:
        try:
            obj = self.kmock.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else obj.raw

    def status(self, name: str = "wharf") -> dict:
        return (self.obj("mqtt.wharf.dev/v1alpha1/mqttbrokers", name) or {}).get("status") or {}

    async def reconciled(self) -> None:
        """Wait until the first reconciliation wrote its whole status."""
        await eventually(lambda: self.condition("CertificatesReady").get("status") == "True"
                         and self.condition("Ready"), "the first reconciliation")

    def condition(self, type_: str, name: str = "wharf") -> dict:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def listener_status(self, listener: str = "mqtts", name: str = "wharf") -> dict:
        return next((e for e in self.status(name).get("listeners") or [] if e["name"] == listener), {})

    def events(self, reason: str) -> list[dict]:
        """Events the operator posted with this reason (from the request log: kmock keys objects by name, and
        events are created with generateName)."""
        found = []
        for request in list(self.kmock):
            resource = request.resource
            if resource is not None and resource.plural == "events" and str(request.method).upper().endswith("POST"):
                data = request.data or {}
                if data.get("reason") == reason:
                    found.append(data)
        return found

    async def add_pods(self, count: int, broker: str = "wharf") -> list[FakeBrokerPod]:
        token_secret = await eventually(lambda: self.obj("v1/secrets", resources.admin_token_secret_name(broker)),
                                        "admin token Secret")
        token = base64.b64decode(token_secret["data"]["token"]).decode()
        for index in range(count):
            pod = await FakeBrokerPod(f"{broker}-{index}", f"127.0.0.{len(self.pods) + 2}", token).start()
            pod.files["ssl:mqtts"] = pod.served["ssl:mqtts"] = self.leaf.fingerprint
            self.pods.append(pod)
            await self.client.create(Resource("", "v1", "pods"), NS, pod.pod_object(NS, broker))
        return self.pods

    async def create_broker(self, spec: dict, name: str = "wharf", annotations: dict | None = None) -> dict:
        body = {"apiVersion": "mqtt.wharf.dev/v1alpha1", "kind": "MQTTBroker",
                "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1",
                             "generation": 1, "annotations": annotations or {}},
                "spec": spec}
        return await self.client.create(BROKERS, NS, body)

    async def patch_broker(self, patch: dict, name: str = "wharf") -> None:
        await self.client.patch(BROKERS, NS, name, patch)

    async def rotate_secret(self, leaf, ca=None, name: str = "broker-tls", project: bool = True) -> None:
        """Write new material into the Secret, and (as the kubelet would, a little later) into the pods' files."""
        await self.client.patch(SECRETS, NS, name, {"data": secret_data(leaf, ca or self.ca)})
        if project:
            async def kubelet() -> None:
                await asyncio.sleep(0.2)
                for pod in self.pods:
                    pod.files["ssl:mqtts"] = leaf.fingerprint
            asyncio.get_running_loop().create_task(kubelet())


def tls_spec(**extra: Any) -> dict:
    return {"replicas": 2, "listeners": [
        {"name": "mqtt", "type": "tcp", "port": 1883},
        {"name": "mqtts", "type": "ssl", "port": 8883,
         "tls": {"secretName": "broker-tls", "caRef": {"name": "broker-ca"}}}], **extra}


@contextlib.asynccontextmanager
async def running_operator(kmock, recheck_interval: float = 3600.0):
    """The operator in its own thread and event loop, as in production (kopf treats every task that appears in
    its loop after startup as its own and cancels it on exit, which must not hit the test's tasks)."""
    declare_resources(kmock)
    server = str(kmock.url).rstrip("/")
    api = RecordingKubeApi(server)
    client = KubeApi(server)
    controller = Controller(api, BrokerAdmin(LOOPBACK_ONLY, connect_timeout=1.0, request_timeout=3.0),
                            OperatorConfig(recheck_interval=recheck_interval, reload_wait=5.0))
    registry = build_registry(controller, kopf.ConnectionInfo(server=server))
    env = Env(kmock, api, client, controller)
    stop, ready = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True,
                                      stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=run, name="wharf-operator", daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 15), "the operator did not start"
        # Watches of MQTTBrokers, Secrets, ConfigMaps and StatefulSets must be open before anything is created
        # (kmock replays).
        await eventually(lambda: len(kmock[kmock_lib.action.WATCH]) >= 4, "the operator's watches")
        await client.create(SECRETS, NS, tls_secret("broker-tls", NS, env.leaf, env.ca))
        await client.create(SECRETS, NS, tls_secret("broker-ca", NS, env.ca, env.ca) | {
            "type": "Opaque", "data": {"ca.crt": base64.b64encode(env.ca.cert_pem).decode()}})
        yield env
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        for pod in env.pods:
            await pod.stop()
        await client.close()
    assert not thread.is_alive(), "the operator did not stop"
    assert failures == []


@pytest.fixture
async def env(kmock):
    async with running_operator(kmock) as environment:
        yield environment


async def test_create_renders_config_and_owns_every_object(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    sts = env.obj("apps/v1/statefulsets", "wharf")

    config_map = env.obj("v1/configmaps", "wharf-config")
    assert config_map["data"]["wharf.conf"] == render.render(defaulted_spec(tls_spec()))
    for resource, name in [("v1/configmaps", "wharf-config"), ("v1/services", "wharf"),
                           ("v1/services", "wharf-headless"), ("v1/serviceaccounts", "wharf"),
                           ("policy/v1/poddisruptionbudgets", "wharf"), ("v1/secrets", "wharf-admin-token"),
                           ("apps/v1/statefulsets", "wharf")]:
        owners = env.obj(resource, name)["metadata"]["ownerReferences"]
        assert owners == [{"apiVersion": "mqtt.wharf.dev/v1alpha1", "kind": "MQTTBroker", "name": "wharf",
                           "uid": "uid-wharf", "controller": True, "blockOwnerDeletion": True}], resource
    pod = sts["spec"]["template"]
    assert sts["spec"]["replicas"] == 2
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert all("subPath" not in m for m in mounts)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["tls-mqtts"]["secret"]["secretName"] == "broker-tls"
    assert volumes["ca-mqtts"]["secret"]["secretName"] == "broker-ca"
    assert list(pod["metadata"]["annotations"]) == [resources.CONFIG_HASH_ANNOTATION]
    assert env.leaf.fingerprint not in str(sts)

    status = env.status()
    assert status["selector"] == "app.kubernetes.io/name=wharf,app.kubernetes.io/instance=wharf,app.kubernetes.io/component=broker"
    assert status["observedGeneration"] == 1
    assert env.condition("ConfigApplied")["status"] == "True"
    assert env.listener_status()["fingerprint"] == env.leaf.fingerprint
    assert status["earliestCertificateExpiry"] == env.listener_status()["notAfter"]
    assert env.condition("Ready")["status"] == "False"  # no pod is ready in an emulated API
    assert env.condition("Ready")["reason"] == "WaitingForPods"


async def test_reconciling_again_writes_nothing(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    env.api.writes.clear()
    # An annotation change makes kopf run the update handler; nothing owned needs to change.
    await env.patch_broker({"metadata": {"annotations": {"example.com/note": "hello"}}})
    # kopf records the handled state only after the handler finished: then every write of it has been made.
    await eventually(lambda: "example.com/note" in env.obj("mqtt.wharf.dev/v1alpha1/mqttbrokers", "wharf")[
        "metadata"]["annotations"].get("operator.mqtt.wharf.dev/last-handled-configuration", ""),
        "the second reconciliation")
    assert any(path.endswith("/mqttbrokers/wharf/status") for _, path in env.api.writes)  # it did run
    owned_writes = [w for w in env.api.writes if "/mqttbrokers/" not in w[1]]
    assert owned_writes == []


async def test_update_applies_tls_options_live_and_rolls_pods_for_new_listeners(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(2)
    hash_before = env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"]["metadata"]["annotations"]

    spec = tls_spec()
    spec["listeners"][1]["tls"]["versions"] = ["tlsv1.3"]
    await env.patch_broker({"spec": {"listeners": spec["listeners"]}})
    await eventually(lambda: all(p.updates for p in pods), "ssl_options pushed to every pod")
    assert pods[0].updates[-1][0] == "ssl:mqtts"
    assert pods[0].updates[-1][1]["ssl_options"]["versions"] == ["tlsv1.3"]
    assert "tlsv1.3" in env.obj("v1/configmaps", "wharf-config")["data"]["wharf.conf"]
    assert env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"]["metadata"]["annotations"] == hash_before
    await eventually(lambda: env.events("ConfigAppliedLive"), "a ConfigAppliedLive event")

    spec["listeners"].append({"name": "ws", "type": "ws", "port": 8083})
    await env.patch_broker({"spec": {"listeners": spec["listeners"], "replicas": 3}})
    sts = await eventually(
        lambda: (s := env.obj("apps/v1/statefulsets", "wharf")) and s["spec"]["replicas"] == 3 and s, "scale to 3")
    assert sts["spec"]["template"]["metadata"]["annotations"] != hash_before
    assert [p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]] == \
        ["mqtt", "mqtts", "ws", "admin", "metrics"]
    await eventually(lambda: env.events("RollingUpdate"), "a RollingUpdate event")


async def test_pause_annotation_stops_reconciliation_and_signalling(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(1)
    await env.patch_broker({"metadata": {"annotations": {PAUSE_ANNOTATION: "true"}}, "spec": {"replicas": 5}})
    await eventually(lambda: env.condition("Paused").get("status") == "True", "Paused=True")
    await eventually(lambda: env.events("PausedTrue"), "a PausedTrue event")
    assert env.obj("apps/v1/statefulsets", "wharf")["spec"]["replicas"] == 2

    new_leaf = make_leaf(env.ca)
    await env.rotate_secret(new_leaf)
    # Unpaused, the same change is signalled within a few tens of milliseconds (see the rotation test); give
    # the paused operator ample time to (wrongly) do it.
    await asyncio.sleep(0.5)
    assert pods[0].reloads == []

    await env.patch_broker({"metadata": {"annotations": {PAUSE_ANNOTATION: "false"}}})
    await eventually(lambda: env.obj("apps/v1/statefulsets", "wharf")["spec"]["replicas"] == 5, "resumed scaling")
    await eventually(lambda: env.condition("Paused").get("status") == "False", "Paused=False")


async def test_valid_secret_rotation_reaches_every_pod_without_touching_the_pod_template(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(2)
    template_before = env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"]

    new_leaf = make_leaf(env.ca)
    await env.rotate_secret(new_leaf)
    await eventually(lambda: env.listener_status().get("lastRotationSeconds") is not None, "the rotation record")

    record = env.listener_status()
    assert record["fingerprint"] == new_leaf.fingerprint
    assert record["podsServing"] == 2 and record["podsTotal"] == 2
    assert "lastError" not in record
    assert all(p.served["ssl:mqtts"] == new_leaf.fingerprint for p in pods)
    assert all(r["fingerprint"] == new_leaf.fingerprint for p in pods for r in p.reloads)
    assert env.condition("CertificatesReady")["status"] == "True"
    assert env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"] == template_before
    events = await eventually(lambda: env.events("CertificateRotated"), "a CertificateRotated event")
    assert "2/2 pods" in events[0]["message"] and events[0]["type"] == "Normal"
    metrics = env.controller.metrics
    assert metrics.rotations.labels(result="complete").value == 1
    # The latency counts from the Secret's event to both pods answering: it includes the 0.2 s "kubelet" delay.
    latency = metrics.rotation_seconds.labels()
    assert latency.count == 1 and 0.2 <= latency.sum < 5.0
    labels = {"namespace": NS, "broker": "wharf", "listener": "mqtts"}
    assert metrics.last_rotation_seconds.labels(**labels).value == pytest.approx(latency.sum, abs=0.01)
    assert metrics.pods_not_serving.labels(**labels).value == 0
    assert metrics.rotation_pending_since.labels(**labels).value == 0
    assert metrics.certificate_not_after.labels(**labels).value == new_leaf.cert.not_valid_after_utc.timestamp()
    assert metrics.reconcile_seconds.labels().count >= 1
    text = metrics.registry.exposition()
    assert 'wharf_operator_rotation_seconds_bucket{le="+Inf"} 1' in text
    assert 'wharf_operator_pods_not_serving{namespace="wharf-test",broker="wharf",listener="mqtts"} 0' in text


async def test_a_rotation_left_incomplete_is_pending_until_the_timer_finishes_it(kmock):
    async with running_operator(kmock, recheck_interval=0.3) as env:
        await env.create_broker(tls_spec())
        await env.reconciled()
        pods = await env.add_pods(2)
        metrics = env.controller.metrics
        labels = {"namespace": NS, "broker": "wharf", "listener": "mqtts"}
        pods[1].refuse.add("ssl:mqtts")
        new_leaf = make_leaf(env.ca)
        before = time.time()
        await env.rotate_secret(new_leaf)
        await eventually(lambda: metrics.rotations.labels(result="incomplete").value >= 1, "an incomplete rotation")
        await eventually(lambda: metrics.pods_not_serving.labels(**labels).value == 1, "one pod not serving")
        pending_since = metrics.rotation_pending_since.labels(**labels).value
        assert before - 1 <= pending_since <= time.time()
        assert metrics.rotation_seconds.labels().count == 0

        pods[1].refuse.clear()
        await eventually(lambda: metrics.rotation_pending_since.labels(**labels).value == 0, "the rotation finished")
        assert metrics.pods_not_serving.labels(**labels).value == 0
        latency = metrics.rotation_seconds.labels()
        assert latency.count == 1 and latency.sum >= 0.2
        assert all(p.served["ssl:mqtts"] == new_leaf.fingerprint for p in pods)
        events = await eventually(lambda: env.events("CertificateRotated"), "a CertificateRotated event")
        assert "(re-check)" in events[-1]["message"]


@pytest.mark.parametrize("breakage, reason", [
    ("key-mismatch", "KeyMismatch"),
    ("untrusted", "ChainUntrusted"),
    ("garbage", "CertificateUnparsable"),
])
async def test_invalid_secret_is_refused_and_never_signalled(env, breakage, reason):
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(2)

    if breakage == "key-mismatch":
        data = secret_data(make_leaf(env.ca), env.ca)
        data["tls.key"] = base64.b64encode(make_leaf(env.ca).key_pem()).decode()
    elif breakage == "untrusted":
        data = secret_data(make_leaf(make_ca("Stranger CA")), env.ca)
    else:
        data = {"tls.crt": base64.b64encode(b"not a certificate").decode(),
                "tls.key": base64.b64encode(b"nor a key").decode()}
    await env.client.patch(SECRETS, NS, "broker-tls", {"data": data})

    condition = await eventually(
        lambda: (c := env.condition("CertificatesReady")).get("status") == "False" and c, "CertificatesReady=False")
    assert reason in condition["message"]
    warnings = await eventually(lambda: env.events("CertificateRefused"), "a CertificateRefused event")
    assert warnings[0]["type"] == "Warning" and reason in warnings[0]["message"]
    assert all(p.reloads == [] for p in pods)
    assert all(p.served["ssl:mqtts"] == env.leaf.fingerprint for p in pods)
    # The status still names the certificate the pods keep serving.
    assert env.listener_status()["fingerprint"] == env.leaf.fingerprint

    # A valid Secret afterwards clears the condition and rotates.
    good = make_leaf(env.ca)
    await env.rotate_secret(good)
    await eventually(lambda: env.condition("CertificatesReady").get("status") == "True", "recovered")
    assert all(p.served["ssl:mqtts"] == good.fingerprint for p in pods)


async def test_deleted_broker_is_forgotten(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(1)
    await env.client.delete(BROKERS, NS, "wharf")
    await eventually(lambda: env.obj("mqtt.wharf.dev/v1alpha1/mqttbrokers", "wharf") is None, "the broker gone")

    env.api.writes.clear()
    await env.rotate_secret(make_leaf(env.ca))
    await asyncio.sleep(0.5)
    assert pods[0].reloads == []
    assert [w for w in env.api.writes if w[0] in ("POST", "PATCH")] == []
    assert ("default", "wharf") not in env.controller._brokers
    # No series of the deleted broker stays behind (an alert on it would never resolve).
    text = env.controller.metrics.registry.exposition()
    assert 'broker="wharf"' not in text


async def test_timer_resignals_a_pod_that_serves_an_old_certificate(kmock):
    async with running_operator(kmock, recheck_interval=0.3) as env:
        await env.create_broker(tls_spec())
        await env.reconciled()
        pods = await env.add_pods(2)
        # Pod 1 came back serving an old certificate (e.g. it missed the signal while restarting).
        stale = make_leaf(env.ca).fingerprint
        pods[1].served["ssl:mqtts"] = stale
        await eventually(lambda: pods[1].reloads, "the timer's reload of pod 1")
        assert pods[1].served["ssl:mqtts"] == env.leaf.fingerprint
        assert pods[0].reloads == []  # pod 0 served the right one: left alone
        await eventually(lambda: env.listener_status().get("podsServing") == 2, "podsServing=2")
        events = await eventually(lambda: env.events("PodsResignalled"), "a PodsResignalled event")
        assert pods[1].name in events[0]["message"]
        labels = {"namespace": NS, "broker": "wharf", "listener": "mqtts"}
        assert env.controller.metrics.pods_not_serving.labels(**labels).value == 0


async def test_mtls_listener_with_a_separate_client_ca_rotates_server_certificates(env):
    """caRef holds the clients' CA; the server certificate chains to its issuer in the Secret's ca.crt."""
    client_ca = make_ca("Clients CA")
    await env.client.create(SECRETS, NS, {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "client-ca", "namespace": NS, "uid": "uid-client-ca", "resourceVersion": "1"},
        "data": {"ca.crt": base64.b64encode(client_ca.cert_pem).decode()}})
    spec = tls_spec()
    spec["listeners"][1]["tls"].update(caRef={"name": "client-ca"}, verify="verify_peer", failIfNoPeerCert=True)
    await env.create_broker(spec)
    await env.reconciled()
    pods = await env.add_pods(2)

    new_leaf = make_leaf(env.ca)
    await env.rotate_secret(new_leaf)
    await eventually(lambda: env.listener_status().get("fingerprint") == new_leaf.fingerprint
                     and env.listener_status().get("podsServing") == 2, "the rotation")
    assert all(p.served["ssl:mqtts"] == new_leaf.fingerprint for p in pods)
    volumes = {v["name"]: v for v in env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ca-mqtts"]["secret"]["secretName"] == "client-ca"


async def test_ca_bundle_change_is_signalled_to_the_pods(env):
    """A CA rotation (the bundle now holds the old and the new CA) reaches the pods without a new leaf."""
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(2)
    bundle = env.ca.cert_pem + make_ca("Next CA").cert_pem
    await env.client.patch(SECRETS, NS, "broker-ca", {"data": {"ca.crt": base64.b64encode(bundle).decode()}})
    await eventually(lambda: all(p.reloads for p in pods), "a reload signal to every pod")
    assert all(r["fingerprint"] == env.leaf.fingerprint for p in pods for r in p.reloads)
    await eventually(lambda: env.listener_status().get("podsServing") == 2, "the status record")
    assert env.condition("CertificatesReady")["status"] == "True"


async def test_a_renewal_from_a_wrong_issuer_is_refused_against_the_pinned_issuer_ca(env):
    """With tls.trustedIssuerCARef, the Secret's own ca.crt is not trusted: an issuer pointed at a wrong CA writes
    that CA there too, and its certificate is refused. Adding the new CA to the pinned bundle (a planned CA
    rotation) lets the same Secret through."""
    await env.client.create(CONFIGMAPS, NS, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "issuer-trust", "namespace": NS, "uid": "uid-issuer-trust", "resourceVersion": "1"},
        "data": {"ca.crt": env.ca.cert_pem.decode()}})
    spec = tls_spec()
    spec["listeners"][1]["tls"] = {"secretName": "broker-tls",
                                   "trustedIssuerCARef": {"kind": "ConfigMap", "name": "issuer-trust"}}
    await env.create_broker(spec)
    await env.reconciled()
    pods = await env.add_pods(2)
    volumes = {v["name"]: v for v in env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["issuerca-mqtts"]["configMap"]["name"] == "issuer-trust"
    assert env.condition("CertificatesReady")["status"] == "True"

    wrong_ca = make_ca("Wrong CA")
    wrong = make_leaf(wrong_ca)
    await env.rotate_secret(wrong, wrong_ca, project=False)  # ca.crt is the wrong CA, as the issuer writes it
    condition = await eventually(
        lambda: (c := env.condition("CertificatesReady")).get("status") == "False" and c, "CertificatesReady=False")
    assert "ChainUntrusted" in condition["message"]
    warnings = await eventually(lambda: env.events("CertificateRefused"), "a CertificateRefused event")
    assert "ChainUntrusted" in warnings[0]["message"]
    assert all(p.reloads == [] for p in pods)
    assert all(p.served["ssl:mqtts"] == env.leaf.fingerprint for p in pods)

    # The pinned bundle is watched: trusting the new CA there lets the waiting Secret through.
    await env.client.patch(CONFIGMAPS, NS, "issuer-trust",
                           {"data": {"ca.crt": (env.ca.cert_pem + wrong_ca.cert_pem).decode()}})
    for pod in pods:
        pod.files["ssl:mqtts"] = wrong.fingerprint
    await eventually(lambda: env.condition("CertificatesReady").get("status") == "True", "accepted once pinned")
    await eventually(lambda: all(p.served["ssl:mqtts"] == wrong.fingerprint for p in pods), "the rotation")


async def test_ready_follows_the_statefulset(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    assert env.condition("Ready")["status"] == "False"
    # The StatefulSet controller reports both pods ready.
    await env.client.patch(Resource("apps", "v1", "statefulsets"), NS, "wharf",
                           {"status": {"replicas": 2, "readyReplicas": 2}})
    ready = await eventually(lambda: (c := env.condition("Ready")).get("status") == "True" and c, "Ready=True")
    assert ready["reason"] == "AllPodsReady" and env.status()["readyReplicas"] == 2
    # The change of state is an event too (the condition's first value, at creation, is not).
    events = await eventually(lambda: env.events("ReadyTrue"), "a ReadyTrue event")
    assert events[0]["type"] == "Normal" and "False -> True (AllPodsReady)" in events[0]["message"]
    assert env.events("ReadyFalse") == []


async def test_rotation_before_any_pod_runs_signals_nobody(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    new_leaf = make_leaf(env.ca)
    await env.rotate_secret(new_leaf, project=False)
    # A reconcile (an owned object's event) may record the new fingerprint first, without pod counts; the Secret
    # handler's record follows.
    await eventually(lambda: env.listener_status().get("fingerprint") == new_leaf.fingerprint
                     and "podsTotal" in env.listener_status(), "the new record")
    assert env.listener_status()["podsTotal"] == 0
    assert env.events("CertificateRotated") == [] and env.events("RotationIncomplete") == []


async def test_timer_pushes_tls_options_a_pod_refused(kmock):
    async with running_operator(kmock, recheck_interval=0.3) as env:
        await env.create_broker(tls_spec())
        await env.reconciled()
        pods = await env.add_pods(2)
        pods[1].refuse_updates = 1
        spec = tls_spec()
        spec["listeners"][1]["tls"]["versions"] = ["tlsv1.3"]
        await env.patch_broker({"spec": {"listeners": spec["listeners"]}})
        await eventually(lambda: pods[1].updates, "the timer's second push to pod 1")
        await eventually(lambda: env.condition("ConfigApplied").get("status") == "True", "ConfigApplied=True")
        assert pods[1].updates[-1][1]["ssl_options"]["versions"] == ["tlsv1.3"]
        # On the way, the status said why (the timer may have fixed it before a poll here could see it).
        history = env.kmock.objects["mqtt.wharf.dev/v1alpha1/mqttbrokers", NS, "wharf"].history
        refusals = [c for version in history if version is not None
                    for c in (version.raw.get("status") or {}).get("conditions") or []
                    if c["type"] == "ConfigApplied" and c["reason"] == "LiveUpdateRefused"]
        assert refusals and "not now" in refusals[0]["message"]


async def test_a_deleted_owned_object_is_recreated_and_removed_spec_fields_leave_it(env):
    await env.create_broker(tls_spec(tolerations=[{"key": "dedicated", "operator": "Exists"}]))
    await env.reconciled()
    assert env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"]["spec"]["tolerations"]
    await env.client.delete(Resource("policy", "v1", "poddisruptionbudgets"), NS, "wharf")
    pdb = await eventually(lambda: env.obj("policy/v1/poddisruptionbudgets", "wharf"), "the PDB recreated")
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "uid-wharf"
    await eventually(lambda: env.controller.metrics.drift_repairs.labels(kind="PodDisruptionBudget").value >= 1,
                     "the repair counted")

    await env.patch_broker({"spec": {"tolerations": None}})
    await eventually(lambda: "tolerations" not in env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"][
        "spec"], "tolerations removed from the StatefulSet")


async def test_a_secret_the_kubelet_has_not_projected_yet_reads_as_waiting_not_refused(env):
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(2)
    # The pods' files never get the new certificate within the reload wait: each pod answers 409.
    await env.rotate_secret(make_leaf(env.ca), project=False)
    condition = await eventually(lambda: (c := env.condition("CertificatesReady")).get("status") == "False" and c,
                                 "CertificatesReady=False", timeout=20)
    assert condition["reason"] == "WaitingForKubelet"
    assert env.listener_status()["reason"] == "WaitingForKubelet"
    assert env.condition("Ready")["reason"] == "WaitingForKubelet"
    assert env.condition("Reconciling")["status"] == "True"
    assert env.condition("Stalled")["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in env.status()["conditions"])
    assert all(p.served["ssl:mqtts"] == env.leaf.fingerprint for p in pods)  # still the old one, not refused


async def client_ca_held(env, bundle: bytes, connected: dict[int, int]) -> str:
    """Connect clients of the current client CA to the pods (pod index -> clients), write ``bundle`` into caRef,
    and wait until the operator holds it; returns the bundle's digest."""
    await env.create_broker(tls_spec())
    await env.reconciled()
    pods = await env.add_pods(2)
    issuer = env.ca.cert.subject.rfc4514_string()
    for index, count in connected.items():
        pods[index].clients["ssl:mqtts"] = [issuer] * count
    await env.client.patch(SECRETS, NS, "broker-ca", {"data": {"ca.crt": base64.b64encode(bundle).decode()}})
    await eventually(lambda: env.listener_status().get("reason") == "ClientCAWouldLockOut", "the bundle held")
    return hashlib.sha256(bundle).hexdigest()


async def test_a_client_ca_bundle_that_would_lock_clients_out_is_held_until_forced(kmock):
    async with running_operator(kmock, recheck_interval=0.3) as env:
        bundle = make_ca("Next Clients CA").cert_pem  # drops the CA the connected clients' certificates come from
        digest = await client_ca_held(env, bundle, {0: 3, 1: 1})
        condition = env.condition("CertificatesReady")
        assert condition["status"] == "False" and condition["reason"] == "ClientCAWouldLockOut"
        assert "4 connected client(s)" in condition["message"] and digest in condition["message"]
        events = env.events("ClientCAWouldLockOut")
        assert len(events) == 1 and events[0]["type"] == "Warning"
        assert "CN=Wharf Test CA (4)" in events[0]["message"]
        assert f"mqtt.wharf.dev/force-client-ca={digest}" in events[0]["message"]
        # The timer asks again and keeps holding it: no pod is told to reload, one Event for the one finding.
        checks = len(env.pods[0].ca_checks)
        await eventually(lambda: len(env.pods[0].ca_checks) >= checks + 2, "the timer's checks")
        assert all(p.reloads == [] for p in env.pods)
        assert len(env.events("ClientCAWouldLockOut")) == 1
        assert {c["candidate_sha256"] for p in env.pods for c in p.ca_checks} == {digest}

        # An annotation for another bundle does not force this one.
        await env.patch_broker({"metadata": {"annotations": {"mqtt.wharf.dev/force-client-ca": "0" * 64}}})
        checks = len(env.pods[0].ca_checks)
        await eventually(lambda: len(env.pods[0].ca_checks) >= checks + 2, "more checks")
        assert all(p.reloads == [] for p in env.pods)

        await env.patch_broker({"metadata": {"annotations": {"mqtt.wharf.dev/force-client-ca": digest}}})
        await eventually(lambda: all(p.reloads for p in env.pods), "the forced signal to every pod")
        # The reload names the bundle: the pods' own guard lets it through too.
        assert all(r.get("client_ca_sha256") == digest for p in env.pods for r in p.reloads)
        await eventually(lambda: env.listener_status().get("podsServing") == 2
                         and env.condition("CertificatesReady").get("status") == "True", "the forced rotation")
        forced = env.events("ClientCAForced")
        assert len(forced) == 1 and "4 connected client(s)" in forced[0]["message"]


async def test_a_held_client_ca_bundle_is_signalled_once_the_clients_reconnected_with_new_certificates(kmock):
    async with running_operator(kmock, recheck_interval=0.3) as env:
        next_ca = make_ca("Next Clients CA")
        # A bundle that still trusts the current CA is no problem (and is signalled, although the served leaf does
        # not change: the timer, running every 0.3 s, must not take it for served)...
        bundle = next_ca.cert_pem + env.ca.cert_pem
        await env.create_broker(tls_spec())
        await env.reconciled()
        pods = await env.add_pods(2)
        pods[0].clients["ssl:mqtts"] = [env.ca.cert.subject.rfc4514_string()] * 2
        await env.client.patch(SECRETS, NS, "broker-ca", {"data": {"ca.crt": base64.b64encode(bundle).decode()}})
        await eventually(lambda: all(p.reloads for p in pods), "the signal of a bundle that keeps every client")
        assert env.events("ClientCAWouldLockOut") == []
        for pod in pods:
            pod.reloads.clear()

        # ...the next one, without the old CA, is held while the clients still use it.
        await env.client.patch(SECRETS, NS, "broker-ca",
                               {"data": {"ca.crt": base64.b64encode(next_ca.cert_pem).decode()}})
        await eventually(lambda: env.listener_status().get("reason") == "ClientCAWouldLockOut", "the bundle held")
        assert "CN=Wharf Test CA (2)" in env.listener_status()["lastError"]
        assert all(p.reloads == [] for p in pods)
        pods[0].clients["ssl:mqtts"] = [next_ca.cert.subject.rfc4514_string()] * 2  # reconnected, new certificates
        await eventually(lambda: all(p.reloads for p in pods), "the signal once nobody would be locked out")
        # Unforced, the reload does not name the bundle: each broker's guard judges it again when it loads it.
        assert all("client_ca_sha256" not in r for p in pods for r in p.reloads)
        await eventually(lambda: env.condition("CertificatesReady").get("status") == "True", "CertificatesReady")
        assert env.events("ClientCAForced") == []


async def test_a_bundle_a_pods_guard_holds_after_an_unforced_signal_is_reported_and_asked_again(kmock):
    """Signalled when nobody would be locked out, but devices of the old CA connected to a pod before its files
    carried the bundle, so that pod's guard holds it: the operator sees it in the pod's answer, reports it and asks
    again until they reconnected with certificates the bundle trusts."""
    async with running_operator(kmock, recheck_interval=0.3) as env:
        await env.create_broker(tls_spec())
        await env.reconciled()
        pods = await env.add_pods(2)
        next_ca = make_ca("Next Clients CA")
        digest = hashlib.sha256(next_ca.cert_pem).hexdigest()
        await env.client.patch(SECRETS, NS, "broker-ca",
                               {"data": {"ca.crt": base64.b64encode(next_ca.cert_pem).decode()}})
        await eventually(lambda: all(p.reloads for p in pods), "the signal: nobody connected yet")
        pods[1].clients["ssl:mqtts"] = [env.ca.cert.subject.rfc4514_string()] * 2
        pods[1].ca_held["ssl:mqtts"] = {"sha256": digest, "would_fail": 2}
        await eventually(lambda: env.listener_status().get("reason") == "ClientCAWouldLockOut", "the hold reported")
        events = await eventually(lambda: env.events("ClientCAWouldLockOut"), "a ClientCAWouldLockOut event")
        assert "2 connected client(s)" in events[0]["message"] and digest in events[0]["message"]

        for pod in pods:
            pod.reloads.clear()
        pods[1].clients["ssl:mqtts"] = [next_ca.cert.subject.rfc4514_string()] * 2  # reconnected, new certificates
        pods[1].ca_held.clear()
        await eventually(lambda: all(p.reloads for p in pods), "the signal once nobody would be locked out")
        await eventually(lambda: env.condition("CertificatesReady").get("status") == "True", "CertificatesReady")


async def test_the_force_annotation_acts_at_once_not_at_the_next_timer_pass(env):
    """The timer runs hourly here: the annotation's own event signals the held bundle."""
    bundle = make_ca("Next Clients CA").cert_pem
    digest = await client_ca_held(env, bundle, {1: 2})
    assert all(p.reloads == [] for p in env.pods)
    await env.patch_broker({"metadata": {"annotations": {"mqtt.wharf.dev/force-client-ca": digest}}})
    await eventually(lambda: all(p.reloads for p in env.pods), "the forced signal", timeout=10)
    assert all(r.get("client_ca_sha256") == digest for p in env.pods for r in p.reloads)
    await eventually(lambda: env.condition("CertificatesReady").get("status") == "True", "CertificatesReady")
