"""The NetworkPolicy of an MQTTBroker on the real control plane: the real ``wharf-operator`` (the chart's RBAC, a
ServiceAccount token) creates it by server-side apply (the API server validates it), repairs it when it is deleted
or edited by hand, deletes it when ``spec.networkPolicy.enabled`` turns false, and the garbage collector takes it
with the MQTTBroker. (Whether a CNI enforces it is not tested here: there is no CNI; what it admits is the unit
tests' job, tests/operator/test_builders_status.py.)
"""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client import ApiException
from operator_support import install_operator_identity, running_operator, service_account_may
from realapi_support import wait_for

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
HAND = "kubectl-edit"
TIMEOUT = 60
OPERATOR_LABELS = {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/component": "operator"}


def _policy(networking, namespace: str, name: str):
    try:
        return networking.read_namespaced_network_policy(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _rules(policy) -> dict[int, list | None]:
    """Each admitted port and its peers (None: anyone), from the live object."""
    rules: dict[int, list | None] = {}
    for rule in policy.spec.ingress:
        peers = [kubernetes.client.ApiClient().sanitize_for_serialization(peer) for peer in rule._from] \
            if rule._from else None
        for port in rule.ports:
            rules[port.port] = peers
    return rules


@pytest.mark.timeout(300)
def test_network_policy_is_created_repaired_and_removed(controlplane, api, mqttbroker_crd, helm, namespace,
                                                        tmp_path):
    binary, home = helm
    kubeconfig, operator_namespace, account = install_operator_identity(controlplane, api, binary, home, tmp_path,
                                                                        [namespace])
    # The chart's RBAC grants what the operator needs on NetworkPolicies (and nothing is a wildcard).
    for verb in ("get", "list", "watch", "create", "patch", "delete"):
        assert service_account_may(api, operator_namespace, account, namespace, verb, "networkpolicies",
                                   "networking.k8s.io"), verb
    networking = kubernetes.client.NetworkingV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    labels = [f"--operator-pod-label={k}={v}" for k, v in OPERATOR_LABELS.items()]
    with running_operator(kubeconfig, tmp_path / "operator.log", namespaces=[namespace],
                          pod_cidr=controlplane.pod_cidr,
                          # A resync longer than the test: every repair below comes from the watch events.
                          extra_args=["--resync-interval", "3600", "--operator-namespace", operator_namespace,
                                      *labels]):
        name = "netpol"
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": name},
            "spec": {"replicas": 1, "listeners": [{"name": "mqtt", "type": "tcp", "port": 1883},
                                                  {"name": "ws", "type": "ws", "port": 8083}]}})
        uid = created["metadata"]["uid"]

        policy = wait_for(lambda: _policy(networking, namespace, name), "the NetworkPolicy", timeout=TIMEOUT)
        assert [(r.kind, r.name, r.uid, r.controller) for r in policy.metadata.owner_references] == [
            ("MQTTBroker", name, uid, True)]
        assert policy.spec.policy_types == ["Ingress"]
        assert policy.spec.pod_selector.match_labels == {"app.kubernetes.io/name": "wharf",
                                                         "app.kubernetes.io/instance": name,
                                                         "app.kubernetes.io/component": "broker"}
        operator_peer = [{"podSelector": {"matchLabels": OPERATOR_LABELS},
                          "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}}}]
        assert _rules(policy) == {1883: None, 8083: None, 9184: None, 18083: operator_peer}

        # Deleted: back, a new object owned by the same MQTTBroker.
        before = policy.metadata.uid
        networking.delete_namespaced_network_policy(name, namespace)

        def recreated():
            live = _policy(networking, namespace, name)
            return live if live is not None and live.metadata.uid != before else None
        policy = wait_for(recreated, "the deleted NetworkPolicy recreated", timeout=TIMEOUT)
        assert _rules(policy)[18083] == operator_peer

        # Edited by hand to open the admin port to everyone: the operator's rule comes back.
        networking.patch_namespaced_network_policy(name, namespace, {"spec": {"ingress": [
            {"ports": [{"protocol": "TCP", "port": 18083}]}]}}, field_manager=HAND)
        wait_for(lambda: (live := _policy(networking, namespace, name)) is not None
                 and _rules(live) == {1883: None, 8083: None, 9184: None, 18083: operator_peer},
                 "the edited NetworkPolicy changed back", timeout=TIMEOUT)

        # Turned off in the spec: deleted (it must not go on restricting the pods); on again: back.
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                              {"spec": {"networkPolicy": {"enabled": False}}})
        wait_for(lambda: _policy(networking, namespace, name) is None, "the NetworkPolicy deleted", timeout=TIMEOUT)
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                              {"spec": {"networkPolicy": {"enabled": True, "metricsFrom": [
                                                  {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]}}})
        policy = wait_for(lambda: _policy(networking, namespace, name), "the NetworkPolicy back", timeout=TIMEOUT)
        assert _rules(policy)[9184] == [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]

    # The operator stopped: the MQTTBroker's deletion takes its NetworkPolicy with it (ownerReferences, the garbage
    # collector), as every other object it owns.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_for(lambda: _policy(networking, namespace, name) is None, "the NetworkPolicy garbage-collected",
             timeout=120)
