"""End to end, without kind: durable broker state across an operator-driven pod restart (issue #13).

The real operator manages an MQTTBroker with ``spec.durableStorage.enabled``; the StatefulSet controller's claim
binds to a PersistentVolume the test provisions; the harness plays the kubelet (the claim's volume is the bound
PersistentVolume's directory, which outlives the Pod) and runs a real ``wharf-broker`` for the Pod. A persistent
MQTT 5.0 session goes offline, a publisher is acknowledged for QoS 1 and QoS 2 messages, the Pod is deleted (the
harness SIGKILLs its broker, the StatefulSet controller creates the Pod again, on the same claim), and the
subscriber, back on the new Pod, receives every acknowledged message: QoS 2 exactly once."""

from __future__ import annotations

import re
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field

import kubernetes
import paho.mqtt.client as mqtt
import pytest
from kubelet_harness import KubeletHarness
from operator_support import install_operator_identity, running_operator
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from realapi_support import is_test_pod_ip, unique_name, wait_for
from test_cluster_operator import _volumes_for
from test_operator import GROUP, PLURAL, VERSION

BROKER = "keeper"
POD = f"{BROKER}-0"
CLAIM = f"data-{POD}"  # <volumeClaimTemplate>-<pod>, as the StatefulSet controller names it
TOPIC = "e2e/durable"
PER_QOS = 40
SESSION_EXPIRY = 3600


def _broker_body(storage_class: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": BROKER},
            # Anonymous clients on any topic: this test is about the state, not about access.
            "spec": {"replicas": 1, "image": "wharf:e2e", "authentication": {"allowAnonymous": True},
                     "authorization": {"noMatch": "allow"},
                     "durableStorage": {"enabled": True, "size": "1Gi", "storageClassName": storage_class}}}


@dataclass
class Session:
    """A paho MQTT 5.0 client; ``messages`` keeps every delivery (payload, QoS, DUP), duplicates included."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    session_present: list[bool] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    messages: list[tuple[bytes, int]] = field(default_factory=list)


def _connect(client_id: str, ip: str, *, clean_start: bool, expiry: int) -> Session:
    assert is_test_pod_ip(ip), ip
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    session = Session(client)

    def on_connect(_client, _userdata, flags, reason_code, _properties):
        if not reason_code.is_failure:
            session.session_present.append(bool(flags.session_present))
            session.connected.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: session.subscribed.set()
    client.on_message = lambda _c, _u, message: session.messages.append((message.payload, message.qos))
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry
    client.connect(ip, 1883, keepalive=30, clean_start=clean_start, properties=properties)
    client.loop_start()
    if not session.connected.wait(30):
        client.loop_stop()
        raise AssertionError(f"{client_id} did not connect to {ip}:1883")
    return session


def _close(session: Session) -> None:
    session.client.disconnect()
    session.client.loop_stop()


def _connect_when_listening(client_id: str, ip: str, *, clean_start: bool, expiry: int = 0) -> Session:
    """The harness starts the process before its listener opens (the broker reads its store first)."""
    def attempt():
        try:
            return _connect(client_id, ip, clean_start=clean_start, expiry=expiry)
        except (OSError, AssertionError):
            return None
    return wait_for(attempt, f"{client_id} connected to {ip}:1883", timeout=90, interval=0.5)


def _running_pod(kubelet: KubeletHarness, core, namespace: str, not_uid: str | None = None):
    """The broker Pod from the API and its process, once the harness runs it (a Pod other than ``not_uid``)."""
    def running():
        runtime = kubelet.running().get(POD)
        return runtime if runtime is not None and runtime.uid != not_uid else None

    runtime = wait_for(running, f"a broker process for a Pod {POD}" + (" (the new one)" if not_uid else ""),
                       timeout=180)
    pod = core.read_namespaced_pod(POD, namespace)
    assert pod.metadata.uid == runtime.uid and pod.status.pod_ip == runtime.ip
    return pod, runtime


def _claim_of(pod) -> str:
    (claim,) = [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim]
    return claim


@pytest.mark.timeout(600)
def test_acknowledged_messages_survive_an_operator_driven_pod_restart(controlplane, api, mqttbroker_crd,  # noqa: F811
                                                                      helm, namespace, tmp_path):  # noqa: F811
    core = kubernetes.client.CoreV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)
    storage_class = unique_name("wharf-durable")
    (volume,) = _volumes_for(core, storage_class, 1)
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, watch=[namespace])
    sessions: list[Session] = []
    try:
        with running_operator(kubeconfig, tmp_path / "operator.log", namespaces=[namespace],
                              pod_cidr=controlplane.pod_cidr), \
                KubeletHarness(api, namespace, f"app.kubernetes.io/instance={BROKER}", tmp_path / "pods") as kubelet:
            brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _broker_body(storage_class))
            first_pod, first = _running_pod(kubelet, core, namespace)
            assert _claim_of(first_pod) == CLAIM
            claim = core.read_namespaced_persistent_volume_claim(CLAIM, namespace)
            assert claim.status.phase == "Bound" and claim.spec.volume_name == volume
            data_dir = kubelet.claim_directory(CLAIM)
            assert first.host_paths["/var/lib/wharf"] == data_dir

            # A persistent session subscribes (QoS 2 grants each message its own QoS) and goes offline.
            subscriber = _connect_when_listening("durable-sub", first.ip, clean_start=True, expiry=SESSION_EXPIRY)
            subscriber.client.subscribe(TOPIC, qos=2)
            assert subscriber.subscribed.wait(30)
            _close(subscriber)

            # Every PUBACK (QoS 1) and PUBREC/PUBCOMP (QoS 2) the publisher gets is a promise.
            publisher = _connect_when_listening("durable-pub", first.ip, clean_start=True)
            sessions.append(publisher)
            acknowledged: dict[bytes, int] = {}
            for sequence in range(PER_QOS):
                for qos in (1, 2):
                    payload = f"q{qos}-{sequence}".encode()
                    info = publisher.client.publish(TOPIC, payload, qos=qos)
                    info.wait_for_publish(timeout=30)
                    assert info.is_published(), f"{payload!r} was not acknowledged"
                    acknowledged[payload] = qos
            _close(publisher)
            sessions.remove(publisher)
            assert (data_dir / "wharf.db").is_file()
            assert not kubelet.errors, kubelet.errors

            # The Kubernetes way: delete the Pod; the harness SIGKILLs its broker, the StatefulSet recreates it.
            core.delete_namespaced_pod(POD, namespace)
            second_pod, second = _running_pod(kubelet, core, namespace, not_uid=first.uid)
            (stop,) = [s for s in kubelet.stopped if s.uid == first.uid]
            assert stop.signal == signal.SIGKILL and stop.returncode == -signal.SIGKILL, stop
            # The same claim, bound to the same volume, is the new Pod's data directory.
            assert _claim_of(second_pod) == CLAIM
            claim_after = core.read_namespaced_persistent_volume_claim(CLAIM, namespace)
            assert claim_after.metadata.uid == claim.metadata.uid
            assert claim_after.status.phase == "Bound" and claim_after.spec.volume_name == volume
            assert second.host_paths["/var/lib/wharf"] == data_dir

            # The subscriber comes back to its session on the new Pod and gets every acknowledged message.
            subscriber = _connect_when_listening("durable-sub", second.ip, clean_start=False,
                                                 expiry=SESSION_EXPIRY)
            sessions.append(subscriber)
            assert subscriber.session_present == [True]
            wait_for(lambda: set(acknowledged) <= {payload for payload, _ in subscriber.messages},
                     "every acknowledged message on the restarted Pod", timeout=60)
            # A message published now queues behind anything still to come: once it is here, all is.
            publisher = _connect_when_listening("durable-pub", second.ip, clean_start=True)
            sessions.append(publisher)
            publisher.client.publish(TOPIC, b"after", qos=1).wait_for_publish(timeout=30)
            wait_for(lambda: (b"after", 1) in subscriber.messages, "the message published after the restart")

            counts = Counter(payload for payload, _ in subscriber.messages)
            for payload, qos in acknowledged.items():
                if qos == 2:
                    assert counts[payload] == 1, f"QoS 2 {payload!r} delivered {counts[payload]} times"
                assert (payload, qos) in subscriber.messages, f"{payload!r} not delivered at QoS {qos}"
            assert set(counts) == {*acknowledged, b"after"}
            assert not kubelet.errors, kubelet.errors
            # The new process read them from the claim's volume (the publisher's session is not durable).
            log = (tmp_path / "pods" / POD / "broker.log").read_text(errors="replace")
            assert re.search(rf"durable store {re.escape(str(data_dir))}/wharf\.db: 1 sessions, {len(acknowledged)} "
                             r"queued/in-flight messages", log), log[-3000:]
    finally:
        for session in sessions:
            _close(session)
        for pvc in core.list_namespaced_persistent_volume_claim(namespace).items:
            core.delete_namespaced_persistent_volume_claim(pvc.metadata.name, namespace)
        core.delete_persistent_volume(volume)
