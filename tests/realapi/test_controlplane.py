"""The local control plane behaves like Kubernetes: versions, storage, scheduling onto the kwok
node with loopback Pod IPs, garbage collection, RBAC for ServiceAccount tokens."""

from __future__ import annotations

import base64
import ipaddress

import kubernetes
import pytest
from kubernetes.client import ApiException
from realapi_support import (
    absent,
    is_test_pod_ip,
    localcluster,
    token_client,
    unique_name,
    wait_for,
)


def test_every_component_runs_and_the_node_is_ready_on_loopback(controlplane, api):
    assert all(component.alive() for component, _ in controlplane.processes)
    assert ipaddress.ip_address(controlplane.server.split("//")[1].rsplit(":", 1)[0]).is_loopback
    node = kubernetes.client.CoreV1Api(api).read_node(localcluster.NODE_NAME)
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True"
    addresses = [a.address for a in node.status.addresses if a.type == "InternalIP"]
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def test_version_endpoint_reports_the_pinned_release(api):
    pinned = localcluster.pinned_versions()["KUBERNETES_VERSION"]
    info = kubernetes.client.VersionApi(api).get_code()
    assert info.git_version == f"v{pinned}"
    assert (info.major, info.minor) == ("1", pinned.split(".")[1])
    assert info.git_tree_state == "clean"


def test_configmap_and_secret_round_trip_with_optimistic_concurrency(api, namespace):
    core = kubernetes.client.CoreV1Api(api)
    binary = bytes(range(256))
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                  "data": {"broker.conf": "listeners.tcp.default.bind = 1883\n"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "keys"}, "type": "Opaque",
                                              "data": {"blob": base64.b64encode(binary).decode()}})

    config_map = core.read_namespaced_config_map("settings", namespace)
    assert config_map.data == {"broker.conf": "listeners.tcp.default.bind = 1883\n"}
    assert base64.b64decode(core.read_namespaced_secret("keys", namespace).data["blob"]) == binary

    # A write based on a stale resourceVersion is refused with 409 Conflict.
    stale = config_map.metadata.resource_version
    core.patch_namespaced_config_map("settings", namespace, {"data": {"extra": "1"}})
    with pytest.raises(ApiException) as refused:
        core.replace_namespaced_config_map("settings", namespace, {
            "metadata": {"name": "settings", "resourceVersion": stale}, "data": {"lost": "update"}})
    assert refused.value.status == 409
    assert core.read_namespaced_config_map("settings", namespace).data["extra"] == "1"
    assert [n.metadata.name for n in core.list_namespace().items].count(namespace) == 1


def _pods_of(core, namespace: str, selector: str):
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def _running_with_ip(pods, count: int):
    ready = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip
             and p.metadata.deletion_timestamp is None]
    return ready if len(ready) == count else None


def test_statefulset_pods_are_scheduled_and_run_with_loopback_ips(api, namespace):
    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    labels = {"app": "sts-probe"}
    apps.create_namespaced_stateful_set(namespace, {
        "metadata": {"name": "broker"},
        "spec": {"replicas": 3, "serviceName": "broker", "selector": {"matchLabels": labels},
                 "podManagementPolicy": "Parallel",
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "broker", "image": "wharf/broker:test"}]}}},
    })
    pods = wait_for(lambda: _running_with_ip(_pods_of(core, namespace, "app=sts-probe"), 3),
                    "3 StatefulSet Pods Running with an IP")
    assert sorted(p.metadata.name for p in pods) == ["broker-0", "broker-1", "broker-2"]
    for pod in pods:
        assert pod.spec.node_name == localcluster.NODE_NAME
        assert is_test_pod_ip(pod.status.pod_ip), pod.status.pod_ip
        assert ipaddress.ip_address(pod.status.host_ip).is_loopback
        assert all(c.ready for c in pod.status.container_statuses)
    assert len({p.status.pod_ip for p in pods}) == 3
    statefulset = wait_for(lambda: (s := apps.read_namespaced_stateful_set("broker", namespace)).status.ready_replicas == 3
                           and s, "StatefulSet status readyReplicas=3")
    assert statefulset.status.current_replicas == 3


def test_deployment_rolls_out_through_a_replicaset(api, namespace):
    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    labels = {"app": "deploy-probe"}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "web", "image": "wharf/web:test"}]}}},
    })
    wait_for(lambda: apps.read_namespaced_deployment_status("web", namespace).status.available_replicas == 2,
             "Deployment available_replicas=2")
    replica_sets = apps.list_namespaced_replica_set(namespace, label_selector="app=deploy-probe").items
    assert len(replica_sets) == 1 and replica_sets[0].metadata.owner_references[0].name == "web"
    pods = _pods_of(core, namespace, "app=deploy-probe")
    assert len(pods) == 2 and all(is_test_pod_ip(p.status.pod_ip) for p in pods)


def test_garbage_collector_deletes_owned_objects(api, namespace):
    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_secret(namespace, {"metadata": {"name": "owned", "ownerReferences": [reference]}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "independent"}})

    labels = {"app": "gc-probe"}
    apps.create_namespaced_stateful_set(namespace, {
        "metadata": {"name": "gc"},
        "spec": {"replicas": 2, "serviceName": "gc", "selector": {"matchLabels": labels},
                 "podManagementPolicy": "Parallel",
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "c", "image": "wharf/broker:test"}]}}},
    })
    wait_for(lambda: _running_with_ip(_pods_of(core, namespace, "app=gc-probe"), 2), "2 Pods Running")

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    apps.delete_namespaced_stateful_set("gc", namespace, propagation_policy="Background")

    wait_for(lambda: absent(lambda: core.read_namespaced_secret("owned", namespace)), "owned Secret collected")
    wait_for(lambda: not _pods_of(core, namespace, "app=gc-probe"), "StatefulSet Pods collected")
    assert core.read_namespaced_secret("independent", namespace).metadata.name == "independent"


def _configmap_reader_role(rbac, namespace: str, account: str) -> None:
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "configmap-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    })


def _assert_token_has_exactly_the_role(controlplane, token: str, namespace: str) -> None:
    with token_client(controlplane.server, controlplane.pki.ca_cert, token) as client:
        core = kubernetes.client.CoreV1Api(client)
        names = [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
        assert "visible" in names
        assert core.read_namespaced_config_map("visible", namespace).data == {"k": "v"}
        refusals = [
            lambda: core.create_namespaced_config_map(namespace, {"metadata": {"name": unique_name("w")}}),
            lambda: core.list_namespaced_secret(namespace),
            lambda: core.list_namespaced_config_map("default"),
            lambda: core.delete_namespaced_config_map("visible", namespace),
        ]
        for attempt in refusals:
            with pytest.raises(ApiException) as refused:
                attempt()
            assert refused.value.status == 403


def test_service_account_token_is_limited_to_its_role(controlplane, api, namespace):
    core, rbac = kubernetes.client.CoreV1Api(api), kubernetes.client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "visible"}, "data": {"k": "v"}})

    # Without a binding the token authenticates but may do nothing.
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    with token_client(controlplane.server, controlplane.pki.ca_cert, token) as client:
        with pytest.raises(ApiException) as refused:
            kubernetes.client.CoreV1Api(client).list_namespaced_config_map(namespace)
        assert refused.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in refused.value.body

    _configmap_reader_role(rbac, namespace, "reader")
    with token_client(controlplane.server, controlplane.pki.ca_cert, token) as client:
        _wait_until_allowed(client, namespace)
    _assert_token_has_exactly_the_role(controlplane, token, namespace)


def _wait_until_allowed(client, namespace: str) -> bool:
    """Wait (bounded) until the token may list ConfigMaps: RBAC is served from the
    authorizer's informer cache, which follows a new binding shortly after it is written."""
    core = kubernetes.client.CoreV1Api(client)

    def allowed() -> bool:
        try:
            core.list_namespaced_config_map(namespace)
            return True
        except ApiException as error:
            if error.status == 403:
                return False
            raise

    return wait_for(allowed, "the RoleBinding to take effect", timeout=30)


def test_token_controller_fills_a_legacy_service_account_token_secret(controlplane, api, namespace):
    core, rbac = kubernetes.client.CoreV1Api(api), kubernetes.client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "legacy"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "visible"}, "data": {"k": "v"}})
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "legacy-token", "annotations": {"kubernetes.io/service-account.name": "legacy"}},
        "type": "kubernetes.io/service-account-token",
    })
    secret = wait_for(lambda: (s := core.read_namespaced_secret("legacy-token", namespace)).data
                      and "token" in s.data and s, "the token controller to fill the Secret")
    token = base64.b64decode(secret.data["token"]).decode()
    assert base64.b64decode(secret.data["ca.crt"]) == controlplane.pki.ca_cert.read_bytes()
    _configmap_reader_role(rbac, namespace, "legacy")
    with token_client(controlplane.server, controlplane.pki.ca_cert, token) as client:
        _wait_until_allowed(client, namespace)
    _assert_token_has_exactly_the_role(controlplane, token, namespace)
