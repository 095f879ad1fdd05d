"""The real operator (the `wharf-operator` entry point) against the real control plane, with the
chart's RBAC and nothing more: it creates what an MQTTBroker owns, writes status, and deleting
the MQTTBroker garbage-collects everything. Once cluster-wide, once watching one namespace."""

from __future__ import annotations

import kubernetes
import pytest
from operator_support import (
    create_one_way_tls_inputs,
    example_broker,
    install_operator_identity,
    running_operator,
    service_account_may,
)
from realapi_support import absent, is_test_pod_ip, wait_for

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
CRD_NAME = f"{PLURAL}.{GROUP}"


def _operator_setup(controlplane, api, helm, tmp_path, watch: list[str]):
    binary, home = helm
    return install_operator_identity(controlplane, api, binary, home, tmp_path, watch)


def _owned_objects(api, namespace: str, name: str) -> dict[str, object]:
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    policy = kubernetes.client.PolicyV1Api(api)
    return {
        "StatefulSet": lambda: apps.read_namespaced_stateful_set(name, namespace),
        "Service": lambda: core.read_namespaced_service(name, namespace),
        "Service/headless": lambda: core.read_namespaced_service(f"{name}-headless", namespace),
        "ConfigMap": lambda: core.read_namespaced_config_map(f"{name}-config", namespace),
        "Secret/admin-token": lambda: core.read_namespaced_secret(f"{name}-admin-token", namespace),
        "ServiceAccount": lambda: core.read_namespaced_service_account(name, namespace),
        "PodDisruptionBudget": lambda: policy.read_namespaced_pod_disruption_budget(name, namespace),
    }


def _condition(status: dict, kind: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _broker_lifecycle(api, namespace: str, operator_log) -> None:
    core = kubernetes.client.CoreV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)
    create_one_way_tls_inputs(core, namespace)
    body = example_broker("one-way-tls.yaml")
    body["spec"]["replicas"] = 2  # two Pods, so that every owned object and status is checked with more than one
    name = body["metadata"]["name"]
    created = brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    uid, generation = created["metadata"]["uid"], created["metadata"]["generation"]

    owned = _owned_objects(api, namespace, name)
    for kind, read in owned.items():
        obj = wait_for(read, f"{kind} created by the operator")
        references = [r for r in obj.metadata.owner_references or [] if r.uid == uid]
        assert references and references[0].kind == "MQTTBroker" and references[0].controller, kind
    statefulset = owned["StatefulSet"]()
    assert statefulset.spec.replicas == 2
    config = owned["ConfigMap"]()
    assert any("8883" in text for text in (config.data or {}).values())

    # kwok runs the StatefulSet's Pods on the fake node, with loopback Pod IPs.
    def running_pods():
        pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={name}").items
        running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return running if len(running) == 2 else None

    pods = wait_for(running_pods, "2 broker Pods Running")
    assert all(is_test_pod_ip(p.status.pod_ip) for p in pods)

    def reconciled_status():
        status = brokers.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
        applied = _condition(status, "ConfigApplied")
        if status.get("observedGeneration") == generation and applied and applied.get("status") == "True":
            return status
        return None

    status = wait_for(reconciled_status, "status.observedGeneration and ConfigApplied=True")
    assert status["replicas"] == 2
    assert status["selector"] == f"app.kubernetes.io/name=wharf,app.kubernetes.io/instance={name},app.kubernetes.io/component=broker"
    assert _condition(status, "Ready") is not None

    brokers.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_for(lambda: absent(lambda: brokers.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)),
             "the MQTTBroker to be deleted (operator finalizer released)")
    # The garbage collector learns a new CRD's kind at its next discovery resync (every 30 s), so
    # the first collection after the CRD is installed can take that long.
    for kind, read in owned.items():
        wait_for(lambda read=read: absent(read), f"{kind} garbage-collected", timeout=120)
    wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={name}").items,
             "broker Pods garbage-collected", timeout=120)
    assert core.read_namespaced_secret("wharf-tls", namespace).metadata.name == "wharf-tls"  # not owned: kept

    # Sufficient RBAC: the authorizer never refused the operator anything. (Other 403s can occur:
    # a cluster-wide operator also meets MQTTBrokers of other tests in namespaces being deleted.)
    refusals = [line for line in operator_log.read_text().splitlines() if 'forbidden: User "system:serviceaccount' in line]
    assert not refusals, "\n".join(refusals[:5])


def _allowed(api, namespace: str | None, account: str, account_namespace: str, verb: str, resource: str,
             group: str = "") -> bool:
    return service_account_may(api, account_namespace, account, namespace, verb, resource, group)


@pytest.mark.timeout(400)
def test_operator_cluster_wide_with_chart_rbac(controlplane, api, mqttbroker_crd, helm, namespace, tmp_path):
    kubeconfig, operator_namespace, account = _operator_setup(controlplane, api, helm, tmp_path, watch=[])
    log = tmp_path / "operator.log"
    with running_operator(kubeconfig, log, namespaces=[], pod_cidr=controlplane.pod_cidr):
        _broker_lifecycle(api, namespace, log)
    # Least privilege: the broker Pods come from the StatefulSet, never from the operator.
    assert not _allowed(api, namespace, account, operator_namespace, "create", "pods")
    assert not _allowed(api, namespace, account, operator_namespace, "create", "deployments", "apps")
    assert not _allowed(api, None, account, operator_namespace, "delete", "nodes")
    assert _allowed(api, namespace, account, operator_namespace, "create", "statefulsets", "apps")


@pytest.mark.timeout(400)
def test_operator_in_single_namespace_mode_with_chart_rbac(controlplane, api, mqttbroker_crd, helm, namespace,
                                                           tmp_path):
    kubeconfig, operator_namespace, account = _operator_setup(controlplane, api, helm, tmp_path, watch=[namespace])
    log = tmp_path / "operator.log"
    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr):
        _broker_lifecycle(api, namespace, log)
    # The namespaced grant reaches nothing outside the watched namespace.
    assert _allowed(api, namespace, account, operator_namespace, "list", "secrets")
    assert not _allowed(api, "default", account, operator_namespace, "list", "secrets")
    assert not _allowed(api, None, account, operator_namespace, "list", "namespaces")
    assert not _allowed(api, None, account, operator_namespace, "list", "customresourcedefinitions",
                        "apiextensions.k8s.io")
