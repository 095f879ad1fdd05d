"""spec.cluster on the real control plane: the CRD's CEL rules refuse invalid cluster specs; the real operator
(chart RBAC only) deploys a NATS cluster the API server accepts, whose Pods kwok runs once the StatefulSet
controller's volume claims are bound; switching to an existing NATS deletes it; deletion collects the rest."""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client import ApiException
from operator_support import example_broker, install_operator_identity, running_operator
from realapi_support import is_test_pod_ip, unique_name, wait_for
from realapi_support import absent
from test_operator import GROUP, PLURAL, VERSION


def _refusal(brokers, namespace: str, spec: dict) -> str:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": unique_name("bad")},
            "spec": spec}
    with pytest.raises(ApiException) as refused:
        brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All")
    assert refused.value.status == 422, refused.value.body
    return refused.value.body


def test_cel_rules_refuse_invalid_cluster_specs(api, mqttbroker_crd, namespace):  # noqa: F811
    brokers = kubernetes.client.CustomObjectsApi(api)
    both = {"nats": {"deploy": True, "servers": ["nats://nats.example:4222"]}}
    assert "set exactly one of nats.deploy: true and nats.servers" in _refusal(brokers, namespace, {"cluster": both})
    assert "set exactly one" in _refusal(brokers, namespace, {"cluster": {"nats": {}}})
    assert "tls.serverSecretName" in _refusal(brokers, namespace, {"cluster": {"nats": {
        "deploy": True, "tls": {"clientSecretName": "client"}}}})
    assert "credentialsSecretRef is for an existing NATS" in _refusal(brokers, namespace, {"cluster": {"nats": {
        "deploy": True, "credentialsSecretRef": {"name": "creds"}}}})
    assert "streamReplicas is at most 3" in _refusal(brokers, namespace, {"cluster": {
        "nats": {"deploy": True}, "streamReplicas": 5}})
    assert "servers" in _refusal(brokers, namespace, {"cluster": {"nats": {"servers": ["http://nats:4222"]}}})
    # The valid forms pass, with the schema's defaults filled in by the API server.
    accepted = brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": "ok"},
        "spec": {"cluster": {"nats": {"deploy": True}}}}, dry_run="All")
    assert accepted["spec"]["cluster"]["nats"]["image"] == "nats:2.10-alpine"
    assert accepted["spec"]["cluster"]["nats"]["storage"]["size"] == "1Gi"
    assert accepted["spec"]["cluster"]["streamReplicas"] == 3
    brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": "ok"},
        "spec": {"cluster": {"nats": {"servers": ["tls://nats.messaging.svc:4222"],
                                      "tls": {"clientSecretName": "c"},
                                      "credentialsSecretRef": {"name": "creds"}}}}}, dry_run="All")


def _volumes_for(core, storage_class: str, count: int) -> list[str]:
    """Pre-provisioned volumes of a class only this test uses, for the StatefulSet's claims to bind to."""
    names = []
    for _ in range(count):
        name = unique_name("pv")
        core.create_persistent_volume({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
            "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/nonexistent/{name}"}}})
        names.append(name)
    return names


@pytest.mark.timeout(400)
def test_operator_deploys_nats_and_switches_to_an_existing_one(controlplane, api, mqttbroker_crd, helm,  # noqa: F811
                                                               namespace, tmp_path):
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, [namespace])
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    policy = kubernetes.client.PolicyV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)
    storage_class = unique_name("wharf-test")
    volumes = _volumes_for(core, storage_class, 3)
    log = tmp_path / "operator.log"
    try:
        with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr):
            body = example_broker("cluster.yaml")
            body["spec"]["cluster"]["nats"]["storage"]["storageClassName"] = storage_class
            name = body["metadata"]["name"]
            created = brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            uid = created["metadata"]["uid"]

            nats_objects = {
                "StatefulSet": lambda: apps.read_namespaced_stateful_set(f"{name}-nats", namespace),
                "Service": lambda: core.read_namespaced_service(f"{name}-nats", namespace),
                "Service/headless": lambda: core.read_namespaced_service(f"{name}-nats-headless", namespace),
                "ConfigMap": lambda: core.read_namespaced_config_map(f"{name}-nats-config", namespace),
                "PodDisruptionBudget": lambda: policy.read_namespaced_pod_disruption_budget(f"{name}-nats",
                                                                                           namespace),
            }
            for kind, read in nats_objects.items():
                obj = wait_for(read, f"NATS {kind} accepted by the API server")
                assert any(r.uid == uid and r.controller for r in obj.metadata.owner_references or []), kind
            headless = nats_objects["Service/headless"]()
            assert headless.spec.cluster_ip == "None" and headless.spec.publish_not_ready_addresses

            # The StatefulSet controller makes the claims, they bind to the volumes, the scheduler places
            # the Pods and kwok runs them.
            def running_nats_pods():
                pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/name=wharf-nats,"
                                                                          f"app.kubernetes.io/instance={name}").items
                running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
                return running if len(running) == 3 else None

            pods = wait_for(running_nats_pods, "3 NATS Pods Running", timeout=120)
            assert all(is_test_pod_ip(p.status.pod_ip) for p in pods)
            claims = core.list_namespaced_persistent_volume_claim(namespace).items
            assert sorted(c.metadata.name for c in claims) == [f"data-{name}-nats-{i}" for i in range(3)]
            assert all(c.status.phase == "Bound" and c.spec.storage_class_name == storage_class for c in claims)
            # The broker pods are not NATS pods, nor the reverse.
            broker_pods = core.list_namespaced_pod(
                namespace, label_selector=f"app.kubernetes.io/name=wharf,app.kubernetes.io/instance={name}").items
            assert not any(p.metadata.name.startswith(f"{name}-nats") for p in broker_pods)

            def nats_ready_in_status():
                status = brokers.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get(
                    "status") or {}
                cluster = status.get("cluster") or {}
                return status if cluster.get("natsReady") and cluster.get("natsReadyReplicas") == 3 else None

            status = wait_for(nats_ready_in_status, "status.cluster.natsReady", timeout=120)
            clustered = next(c for c in status["conditions"] if c["type"] == "Clustered")
            # Nothing answers on the fake broker Pods' admin port: not joined, and the status says why.
            assert clustered["status"] == "False" and status["cluster"]["lastError"]

            config = core.read_namespaced_config_map(f"{name}-config", namespace).data["wharf.conf"]
            assert f"tls://{name}-nats-0.{name}-nats-headless.{namespace}.svc:4222" in config

            brokers.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"cluster": {
                "nats": {"deploy": False, "tls": None, "storage": None, "image": None,
                         "servers": ["nats://nats.messaging.svc:4222"]}, "streamReplicas": 1}}})
            for kind, read in nats_objects.items():
                wait_for(lambda read=read: absent(read), f"NATS {kind} deleted after the switch")
            wait_for(lambda: "nats://nats.messaging.svc:4222" in core.read_namespaced_config_map(
                f"{name}-config", namespace).data["wharf.conf"], "the config naming the existing NATS")

            brokers.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            wait_for(lambda: absent(lambda: apps.read_namespaced_stateful_set(name, namespace)),
                     "the brokers' StatefulSet garbage-collected", timeout=120)
        refusals = [line for line in log.read_text().splitlines() if 'forbidden: User "system:serviceaccount' in line]
        assert not refusals, "\n".join(refusals[:5])
    finally:
        for claim in core.list_namespaced_persistent_volume_claim(namespace).items:
            core.delete_namespaced_persistent_volume_claim(claim.metadata.name, namespace)
        for volume in volumes:
            core.delete_persistent_volume(volume)
