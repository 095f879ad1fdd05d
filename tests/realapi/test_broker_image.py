"""The broker image on the real control plane: an MQTTBroker without ``spec.image`` runs the operator's
``--broker-image`` and nothing is stored in it; restarting the operator with another value (what ``helm upgrade`` to
a new image does) rolls that broker's StatefulSet to the new image pod by pod, while a broker with ``spec.image``
keeps its own and its pod is not replaced.

The real ``wharf-operator`` runs with the chart's RBAC (a ServiceAccount token); kwok runs the pods (Ready at once,
no probes), so the rollout's pace is the StatefulSet controller's. Printed (run with -s): the time from the new
operator's start until every pod runs the new image, and the most pods seen unavailable at once while it rolled.
"""

from __future__ import annotations

import time

import kubernetes
import pytest
from operator_support import install_operator_identity, running_operator
from realapi_support import wait_for

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
OLD, NEW, PINNED = "registry.test/wharf:1.0.0", "registry.test/wharf:1.1.0", "registry.test/wharf:pinned"
REPLICAS = 3
TIMEOUT = 120  # a safety net against hangs


def _broker(api, namespace: str, name: str, spec: dict) -> dict:
    return kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": name}, "spec": spec})


def _read_broker(api, namespace: str, name: str) -> dict:
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                PLURAL, name)


def _pods(api, namespace: str, name: str) -> list:
    selector = f"app.kubernetes.io/name=wharf,app.kubernetes.io/instance={name},app.kubernetes.io/component=broker"
    return kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def _ready(pod) -> bool:
    return pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _running(api, namespace: str, name: str, image: str, replicas: int) -> list | None:
    """The broker's pods once ``replicas`` of them are ready and run ``image``, and its StatefulSet says the
    rollout is over; else None."""
    sts = kubernetes.client.AppsV1Api(api).read_namespaced_stateful_set(name, namespace)
    status = sts.status
    if sts.spec.template.spec.containers[0].image != image or status.observed_generation != sts.metadata.generation \
            or status.update_revision != status.current_revision or (status.updated_replicas or 0) != replicas:
        return None
    pods = [p for p in _pods(api, namespace, name) if _ready(p)]
    if len(pods) != replicas or any(p.spec.containers[0].image != image for p in pods):
        return None
    return pods


def _status_image(api, namespace: str, name: str, image: str) -> dict | None:
    body = _read_broker(api, namespace, name)
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return status if status.get("image") == image and ready.get("status") == "True" else None


@pytest.mark.timeout(600)
def test_a_new_operator_default_rolls_brokers_without_spec_image_and_leaves_pinned_ones(
        controlplane, api, mqttbroker_crd, helm, namespace, tmp_path):
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, [namespace])
    log = tmp_path / "operator.log"
    # No periodic resync during the test: the new image comes from the new operator's start alone.
    common = ["--resync-interval", "3600", "--recheck-interval", "3600"]

    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr,
                          extra_args=[*common, "--broker-image", OLD]):
        _broker(api, namespace, "follows", {"replicas": REPLICAS})
        _broker(api, namespace, "pinned", {"replicas": 1, "image": PINNED})
        wait_for(lambda: _running(api, namespace, "follows", OLD, REPLICAS), f"follows running {OLD}",
                 timeout=TIMEOUT)
        (pinned_pod,) = wait_for(lambda: _running(api, namespace, "pinned", PINNED, 1), f"pinned running {PINNED}",
                                 timeout=TIMEOUT)
        wait_for(lambda: _status_image(api, namespace, "follows", OLD), f"status.image {OLD} and Ready",
                 timeout=TIMEOUT)
    # Nothing was stored: the API server has no default for spec.image any more.
    assert "image" not in _read_broker(api, namespace, "follows")["spec"]
    old_pods = {p.metadata.name: p.metadata.uid for p in _pods(api, namespace, "follows")}
    pinned_reconciled = log.read_text().count(f"MQTTBroker {namespace}/pinned reconciled")

    # The operator comes back with another default (what `helm upgrade` to a new image does).
    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr,
                          extra_args=[*common, "--broker-image", NEW]):
        started = time.monotonic()
        most_unavailable = 0
        deadline = started + TIMEOUT
        while True:
            done = _running(api, namespace, "follows", NEW, REPLICAS)
            if done:
                break
            assert time.monotonic() < deadline, f"follows never ran {NEW} on {REPLICAS} pods"
            ready = [p for p in _pods(api, namespace, "follows") if _ready(p)]
            most_unavailable = max(most_unavailable, REPLICAS - len(ready))
            time.sleep(0.05)
        seconds = time.monotonic() - started
        print(f"\n  rolled {REPLICAS} pods to the new operator default in {seconds:.2f} s; "
              f"at most {most_unavailable} unavailable at once (seen by polling)", end="")
        # Every pod was replaced (new UIDs), one at a time: never more down than the PDB's maxUnavailable (1).
        assert not {p.metadata.uid for p in done} & set(old_pods.values())
        assert most_unavailable <= 1
        pdb = kubernetes.client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("follows", namespace)
        assert pdb.spec.max_unavailable == 1
        wait_for(lambda: _status_image(api, namespace, "follows", NEW), f"status.image {NEW} and Ready",
                 timeout=TIMEOUT)
        events = [e.message for e in kubernetes.client.CoreV1Api(api).list_namespaced_event(namespace).items
                  if e.reason == "RollingUpdate" and e.involved_object.name == "follows"]
        assert any(f"broker image {OLD} -> {NEW} (the operator default)" in m for m in events), events

        # The pinned broker, reconciled by the new operator too, keeps its image and its pod.
        wait_for(lambda: log.read_text().count(f"MQTTBroker {namespace}/pinned reconciled") > pinned_reconciled,
                 "the new operator reconciled the pinned broker", timeout=TIMEOUT)
        (pod,) = _running(api, namespace, "pinned", PINNED, 1) or [None]
        assert pod is not None and pod.metadata.uid == pinned_pod.metadata.uid
        assert _status_image(api, namespace, "pinned", PINNED)
    assert "forbidden" not in log.read_text().lower()
