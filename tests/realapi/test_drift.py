"""Drift repair on the real control plane: the real ``wharf-operator`` (the chart's RBAC, a ServiceAccount token)
repairs every object an MQTTBroker owns when it is deleted or edited by hand, removes from the live objects
what is removed from the spec, and takes back a field another manager keeps changing only after its backoff.

Every repair is timed from the API call that broke the object to the first read that shows it repaired, and
printed (run with -s to see the figures); the assertions are about what is repaired, not how fast.
"""

from __future__ import annotations

import time
import urllib.request

import kubernetes
import pytest
from kubernetes.client import ApiException
from operator_support import (
    create_one_way_tls_inputs,
    example_broker,
    install_operator_identity,
    running_operator,
)
from realapi_support import localcluster, wait_for

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
CRD_NAME = f"{PLURAL}.{GROUP}"
HAND = "kubectl-edit"  # the field manager of the hand edits, as `kubectl edit` records it
TIMEOUT = 60  # a safety net against hangs (the resync interval is longer: repairs come from the events)


def _create_broker(api, namespace: str, extra_spec: dict | None = None) -> tuple[str, str]:
    create_one_way_tls_inputs(kubernetes.client.CoreV1Api(api), namespace)
    body = example_broker("one-way-tls.yaml")
    body["spec"]["replicas"] = 1
    body["spec"].update(extra_spec or {})
    created = kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body)
    return body["metadata"]["name"], created["metadata"]["uid"]


def _broker_status(api, namespace: str, name: str) -> dict:
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name).get("status") or {}


def _condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _reconciled(api, namespace: str, name: str) -> dict:
    def check():
        body = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                      PLURAL, name)
        status = body.get("status") or {}
        return status if status.get("observedGeneration") == body["metadata"]["generation"] and \
            _condition(status, "Ready") else None
    return wait_for(check, "the MQTTBroker reconciled", timeout=TIMEOUT)


def _timed(what: str, check, started: float) -> float:
    wait_for(check, what, timeout=TIMEOUT, interval=0.05)
    seconds = time.monotonic() - started
    print(f"\n  repaired: {what}: {seconds:.2f} s", end="")
    return seconds


def _settled(log, quiet: float = 3.0) -> None:
    """Wait until the operator has not reconciled for ``quiet`` seconds (the echoes of its own writes and the
    pods' start are over), so that what repairs the next change is known."""
    def count() -> int:
        return log.read_text().count(" reconciled (")
    last, since = count(), time.monotonic()
    deadline = since + TIMEOUT
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the operator never settled"
        time.sleep(0.2)
        if count() != last:
            last, since = count(), time.monotonic()


def _events(api, namespace: str, reason: str) -> list:
    return [e for e in kubernetes.client.CoreV1Api(api).list_namespaced_event(namespace).items if e.reason == reason]


def _metric(port: int, name: str) -> dict[str, float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, _, value = line.rpartition(" ")
            values[labels[len(name):]] = float(value)
    return values


@pytest.mark.timeout(600)
def test_deleted_and_edited_owned_objects_are_repaired(controlplane, api, mqttbroker_crd, helm, namespace,
                                                       tmp_path):
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, [namespace])
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    policy = kubernetes.client.PolicyV1Api(api)
    metrics_port = localcluster.free_loopback_port()
    log = tmp_path / "operator.log"
    # A resync interval longer than the test: every repair below comes from the watch events.
    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr,
                          extra_args=["--resync-interval", "3600", "--metrics-port", str(metrics_port)]):
        name, uid = _create_broker(api, namespace)
        _reconciled(api, namespace, name)
        times: dict[str, float] = {}

        # --- deleted: each owned object comes back, owned by the same MQTTBroker ---------------------------
        owned = {
            "StatefulSet": (lambda: apps.read_namespaced_stateful_set(name, namespace),
                            lambda: apps.delete_namespaced_stateful_set(name, namespace)),
            "Service": (lambda: core.read_namespaced_service(name, namespace),
                        lambda: core.delete_namespaced_service(name, namespace)),
            "Service/headless": (lambda: core.read_namespaced_service(f"{name}-headless", namespace),
                                 lambda: core.delete_namespaced_service(f"{name}-headless", namespace)),
            "ConfigMap": (lambda: core.read_namespaced_config_map(f"{name}-config", namespace),
                          lambda: core.delete_namespaced_config_map(f"{name}-config", namespace)),
            "PodDisruptionBudget": (lambda: policy.read_namespaced_pod_disruption_budget(name, namespace),
                                    lambda: policy.delete_namespaced_pod_disruption_budget(name, namespace)),
            "ServiceAccount": (lambda: core.read_namespaced_service_account(name, namespace),
                               lambda: core.delete_namespaced_service_account(name, namespace)),
            "Secret/admin-token": (lambda: core.read_namespaced_secret(f"{name}-admin-token", namespace),
                                   lambda: core.delete_namespaced_secret(f"{name}-admin-token", namespace)),
        }
        for kind, (read, delete) in owned.items():
            before = read().metadata.uid
            started = time.monotonic()
            delete()

            def recreated(read=read, before=before):
                try:
                    obj = read()
                except ApiException as error:
                    if error.status == 404:
                        return None
                    raise
                owners = [r for r in obj.metadata.owner_references or [] if r.uid == uid and r.controller]
                return obj if obj.metadata.uid != before and owners else None

            times[f"deleted {kind}"] = _timed(f"deleted {kind} recreated", recreated, started)

        # --- edited by another field manager: the operator's value comes back, with a FieldConflict event ------
        edits = {
            "StatefulSet": (
                lambda: apps.patch_namespaced_stateful_set(name, namespace, {"spec": {"template": {"spec": {
                    "terminationGracePeriodSeconds": 7}}}}, field_manager=HAND),
                lambda: apps.read_namespaced_stateful_set(name, namespace).spec.template.spec
                .termination_grace_period_seconds == 30),
            "Service": (
                lambda: core.patch_namespaced_service(name, namespace, {"spec": {"selector": {
                    "app.kubernetes.io/component": "by-hand"}}}, field_manager=HAND),
                lambda: core.read_namespaced_service(name, namespace).spec.selector.get(
                    "app.kubernetes.io/component") == "broker"),
            "Service/headless": (
                lambda: core.patch_namespaced_service(f"{name}-headless", namespace, {"spec": {
                    "publishNotReadyAddresses": False}}, field_manager=HAND),
                lambda: core.read_namespaced_service(f"{name}-headless", namespace).spec
                .publish_not_ready_addresses is True),
            "ConfigMap": (
                lambda: core.patch_namespaced_config_map(f"{name}-config", namespace, {"data": {
                    "wharf.conf": "# edited by hand\n"}}, field_manager=HAND),
                lambda: "edited by hand" not in core.read_namespaced_config_map(f"{name}-config", namespace)
                .data["wharf.conf"]),
            "PodDisruptionBudget": (
                lambda: policy.patch_namespaced_pod_disruption_budget(name, namespace, {"spec": {
                    "maxUnavailable": 3}}, field_manager=HAND),
                lambda: policy.read_namespaced_pod_disruption_budget(name, namespace).spec.max_unavailable == 1),
            "ServiceAccount": (
                lambda: core.patch_namespaced_service_account(name, namespace, {
                    "automountServiceAccountToken": True}, field_manager=HAND),
                lambda: core.read_namespaced_service_account(name, namespace)
                .automount_service_account_token is False),
        }
        for kind, (edit, repaired) in edits.items():
            started = time.monotonic()
            edit()
            times[f"edited {kind}"] = _timed(f"edited {kind} changed back", repaired, started)
        conflicts = wait_for(lambda: _events(api, namespace, "FieldConflict"), "FieldConflict events")
        reported = " ".join(e.message for e in conflicts)
        for kind in ("StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"):
            assert f"{kind}/" in reported, (kind, reported)
        assert HAND in reported

        repairs = wait_for(lambda: _metric(metrics_port, "wharf_operator_drift_repairs_total"), "drift metric")
        print(f"\n  wharf_operator_drift_repairs_total: {repairs}")
        for kind in ("StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount", "Secret"):
            assert repairs.get(f'{{kind="{kind}"}}', 0) >= 1, (kind, repairs)
        assert _metric(metrics_port, "wharf_operator_field_conflicts_total")
        status = _reconciled(api, namespace, name)
        assert _condition(status, "Stalled").get("status") == "False"

    print("\n  time to repair (s): " + ", ".join(f"{what} {seconds:.2f}" for what, seconds in times.items()))


@pytest.mark.timeout(600)
def test_removed_spec_fields_leave_the_live_objects_and_hand_edits_are_not_fought(
        controlplane, api, mqttbroker_crd, helm, namespace, tmp_path):
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, [namespace])
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)
    log = tmp_path / "operator.log"
    extra = {
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [
                {"key": "example.com/zone", "operator": "In", "values": ["a"]}]}}]}},
        "nodeSelector": {"type": "kwok"},
        "podAnnotations": {"example.com/scrape": "true"},
        "service": {"annotations": {"example.com/lb": "internal"}},
    }
    backoff = 6.0
    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr,
                          extra_args=["--resync-interval", "3600", "--conflict-backoff", str(backoff)]):
        name, _ = _create_broker(api, namespace, extra)
        _reconciled(api, namespace, name)
        pod = apps.read_namespaced_stateful_set(name, namespace).spec.template
        assert pod.spec.tolerations and pod.spec.affinity and pod.spec.node_selector == {"type": "kwok"}
        assert pod.metadata.annotations["example.com/scrape"] == "true"
        assert core.read_namespaced_service(name, namespace).metadata.annotations["example.com/lb"] == "internal"

        # Removing the fields from the spec removes them from the live objects.
        started = time.monotonic()
        brokers.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {
            "tolerations": None, "affinity": None, "nodeSelector": None, "podAnnotations": None,
            "service": None}})

        def removed_from_statefulset():
            template = apps.read_namespaced_stateful_set(name, namespace).spec.template
            return not template.spec.tolerations and template.spec.affinity is None and \
                not template.spec.node_selector and "example.com/scrape" not in (template.metadata.annotations or {})

        times = {"pod fields": _timed("removed tolerations, affinity, nodeSelector, pod annotation",
                                      removed_from_statefulset, started)}
        times["Service annotation"] = _timed(
            "removed Service annotation",
            lambda: "example.com/lb" not in (core.read_namespaced_service(name, namespace).metadata.annotations
                                             or {}), started)
        status = _reconciled(api, namespace, name)
        generation = status["observedGeneration"]
        assert all(c.get("observedGeneration") == generation for c in status["conditions"]), status["conditions"]
        assert _condition(status, "Clustered") == {}  # no spec.cluster: not shown as Clustered=False
        for kind in ("Ready", "Reconciling", "Stalled"):
            assert _condition(status, kind), kind

        # Someone keeps changing a field the operator owns: the first change is taken back at once, a second
        # one within the backoff is reported (FieldConflict, Stalled) and left until the backoff is over.
        def pdb_max_unavailable():
            return kubernetes.client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(
                name, namespace).spec.max_unavailable

        def hand_edit():
            kubernetes.client.PolicyV1Api(api).patch_namespaced_pod_disruption_budget(
                name, namespace, {"spec": {"maxUnavailable": 3}}, field_manager=HAND)

        started = time.monotonic()
        hand_edit()
        times["first hand edit"] = _timed("PDB hand edit taken back", lambda: pdb_max_unavailable() == 1, started)
        started = time.monotonic()
        hand_edit()
        stalled = wait_for(lambda: (c := _condition(_broker_status(api, namespace, name), "Stalled")).get(
            "status") == "True" and c, "Stalled=True while the field is left to the other manager")
        assert stalled["reason"] == "FieldConflict" and HAND in stalled["message"]
        left_for = time.monotonic() - started
        assert pdb_max_unavailable() == 3 or left_for >= backoff - 1  # not fought at once
        times["second hand edit (backoff)"] = _timed("PDB hand edit taken back after the backoff",
                                                     lambda: pdb_max_unavailable() == 1, started)
        assert times["second hand edit (backoff)"] >= backoff - 1
        wait_for(lambda: _condition(_broker_status(api, namespace, name), "Stalled").get("status") == "False",
                 "Stalled=False once the field is taken back", timeout=TIMEOUT)
        assert any("after" in e.message for e in _events(api, namespace, "FieldConflict"))

    print("\n  time to repair (s): " + ", ".join(f"{what} {seconds:.2f}" for what, seconds in times.items()))


@pytest.mark.timeout(300)
def test_periodic_resync_repairs_what_no_event_points_at(controlplane, api, mqttbroker_crd, helm, namespace,
                                                         tmp_path):
    """An object edited so that its events no longer name the broker (its owner reference removed) is repaired by
    the resync alone."""
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, [namespace])
    core = kubernetes.client.CoreV1Api(api)
    log = tmp_path / "operator.log"
    resync = 5.0
    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr,
                          extra_args=["--resync-interval", str(resync)]):
        name, uid = _create_broker(api, namespace)
        _reconciled(api, namespace, name)
        _settled(log)
        started = time.monotonic()
        core.patch_namespaced_service_account(name, namespace, {"metadata": {"ownerReferences": None}},
                                              field_manager=HAND)
        seconds = _timed("owner reference removed from the ServiceAccount, put back by the resync",
                         lambda: any(r.uid == uid for r in core.read_namespaced_service_account(name, namespace)
                                     .metadata.owner_references or []), started)
        # The repair was the resync's: no event of the ServiceAccount named the broker any more.
        wait_for(lambda: "(resync); changed: ServiceAccount/" in log.read_text(), "the resync's repair logged")
    print(f"\n  time to repair by resync (interval {resync:.0f} s): {seconds:.2f} s")


@pytest.mark.timeout(300)
def test_a_durable_brokers_statefulset_takes_later_spec_changes(controlplane, api, mqttbroker_crd, helm, namespace,
                                                                tmp_path):
    """The StatefulSet of a broker with spec.durableStorage has volumeClaimTemplates, which cannot change: applying
    the same ones again with a later change of the pod template is accepted."""
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, [namespace])
    apps = kubernetes.client.AppsV1Api(api)
    log = tmp_path / "operator.log"
    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr,
                          extra_args=["--resync-interval", "3600"]):
        name, _ = _create_broker(api, namespace, {"durableStorage": {"enabled": True, "size": "2Gi"}})
        _reconciled(api, namespace, name)
        assert apps.read_namespaced_stateful_set(name, namespace).spec.volume_claim_templates
        kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"podAnnotations": {"example.com/later": "yes"}}})
        wait_for(lambda: (apps.read_namespaced_stateful_set(name, namespace).spec.template.metadata.annotations
                          or {}).get("example.com/later") == "yes", "the later change applied", timeout=TIMEOUT)
        _reconciled(api, namespace, name)
    refused = [line for line in log.read_text().splitlines() if "HTTP 422" in line]
    assert not refused, refused[:3]
