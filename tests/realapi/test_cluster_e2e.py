"""End to end, without kind: the real operator deploys a NATS cluster for an MQTTBroker of 3 replicas; the
harness plays the kubelet for all six Pods kwok runs (three real ``nats-server`` with JetStream, routes between
them, mutual TLS for the brokers; three real ``wharf-broker``); an MQTT client on one broker Pod receives what
a client on another publishes, and status.cluster lists the three members."""

from __future__ import annotations

import shutil
import threading

import kubernetes
import paho.mqtt.client as mqtt
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubelet_harness import KubeletHarness
from operator_support import (
    example_broker,
    install_operator_identity,
    pinned_helm,
    running_operator,
)
from realapi_support import unique_name, wait_for
from test_cluster_operator import _volumes_for
from realapi_support import absent
from test_operator import GROUP, PLURAL, VERSION
from test_rotation_e2e import Authority, tls_secret_data

NATS_NAME = "nats.e2e.test"


def _client(label: str, ip: str) -> tuple[mqtt.Client, threading.Event, list[bytes]]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=label, protocol=mqtt.MQTTv5)
    connected, received = threading.Event(), []
    client.on_connect = lambda *_: connected.set()
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    client.connect(ip, 1883)
    client.loop_start()
    assert connected.wait(30), f"{label} did not connect to {ip}:1883"
    return client, connected, received


@pytest.mark.timeout(500)
@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed")
def test_operator_deployed_nats_joins_three_real_brokers(controlplane, api, mqttbroker_crd,  # noqa: F811
                                                         namespace, tmp_path):
    core = kubernetes.client.CoreV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)
    ca = Authority.create("e2e-nats-ca")
    server_key, server_cert = ca.issue(NATS_NAME, ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = ca.issue("wharf-broker", ExtendedKeyUsageOID.CLIENT_AUTH)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "wharf-nats-server"}, "type": "kubernetes.io/tls",
                                              "stringData": tls_secret_data(ca, server_key, server_cert)})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "wharf-nats-client"},
                                              "stringData": tls_secret_data(ca, client_key, client_cert)})
    storage_class = unique_name("wharf-e2e")
    volumes = _volumes_for(core, storage_class, 3)

    (tmp_path / "helm-home").mkdir()
    kubeconfig, _, _ = install_operator_identity(controlplane, api, pinned_helm(), tmp_path / "helm-home",
                                                 tmp_path, watch=[namespace])
    body = example_broker("cluster.yaml")
    name = body["metadata"]["name"]
    nats = body["spec"]["cluster"]["nats"]
    nats["storage"]["storageClassName"] = storage_class
    # The harness gives Pods IPs, not the names in the servers' certificate: check this name instead.
    nats["tls"]["serverName"] = NATS_NAME
    clients: list[mqtt.Client] = []
    try:
        with running_operator(kubeconfig, tmp_path / "operator.log", namespaces=[namespace],
                              pod_cidr=controlplane.pod_cidr), \
                KubeletHarness(api, namespace, f"app.kubernetes.io/instance={name}", tmp_path / "pods") as kubelet:
            brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

            def six_processes():
                running = kubelet.running()
                return running if len(running) == 6 else None

            pods = wait_for(six_processes, "3 nats-server and 3 wharf-broker processes", timeout=180)
            broker_pods = sorted((p for p in pods.values() if "-nats-" not in p.name), key=lambda p: p.name)
            assert [p.name for p in broker_pods] == [f"{name}-{i}" for i in range(3)]

            def joined():
                status = brokers.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get(
                    "status") or {}
                clustered = next((c for c in status.get("conditions") or [] if c["type"] == "Clustered"), {})
                return status if clustered.get("status") == "True" else None

            status = wait_for(joined, "Clustered=True", timeout=240)
            assert status["cluster"]["members"] == [f"wharf@{name}-{i}" for i in range(3)]
            assert status["cluster"]["podsConnected"] == 3 and status["cluster"]["natsReady"] is True

            subscriber, _, received = _client("e2e-sub", broker_pods[0].ip)
            clients.append(subscriber)
            subscribed = threading.Event()
            subscriber.on_subscribe = lambda *_: subscribed.set()
            subscriber.subscribe("e2e/cluster/#", qos=1)
            assert subscribed.wait(30)
            publisher, _, _ = _client("e2e-pub", broker_pods[2].ip)
            clients.append(publisher)

            # Interest spreads asynchronously (docs/cluster.md): probe until the first message crosses.
            def crossed():
                publisher.publish("e2e/cluster/probe", b"probe", qos=1).wait_for_publish(10)
                return b"probe" in received

            wait_for(crossed, "a message from broker 2 reaching a subscriber on broker 0", timeout=60, interval=0.5)
            payloads = [f"m{i}".encode() for i in range(20)]
            for payload in payloads:
                publisher.publish("e2e/cluster/data", payload, qos=1).wait_for_publish(10)
            wait_for(lambda: [p for p in received if p != b"probe"] == payloads,
                     "every QoS 1 message, in order, on the other pod", timeout=60)
            assert not kubelet.errors, kubelet.errors

            # Deleting the MQTTBroker takes the deployed NATS with it (ownerReferences, garbage collector).
            brokers.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            apps = kubernetes.client.AppsV1Api(api)
            for read in (lambda: apps.read_namespaced_stateful_set(f"{name}-nats", namespace),
                         lambda: core.read_namespaced_service(f"{name}-nats", namespace),
                         lambda: core.read_namespaced_service(f"{name}-nats-headless", namespace),
                         lambda: core.read_namespaced_config_map(f"{name}-nats-config", namespace)):
                wait_for(lambda read=read: absent(read), "the NATS objects garbage-collected", timeout=120)
            wait_for(lambda: not kubelet.running(), "every Pod's process stopped with its Pod", timeout=120)
    finally:
        for client in clients:
            client.loop_stop()
            client.disconnect()
        for claim in core.list_namespaced_persistent_volume_claim(namespace).items:
            core.delete_namespaced_persistent_volume_claim(claim.metadata.name, namespace)
        for volume in volumes:
            core.delete_persistent_volume(volume)
