"""High availability on the real control plane, with the real ``wharf-operator`` (the chart's RBAC, a ServiceAccount
token):

- Deleting an MQTTBroker, or its namespace, while no operator runs is not blocked: the operator puts no finalizer
  on MQTTBrokers, and removes the one an older version left; owned objects go by garbage collection.
- Two operator replicas elect a leader on a Lease; the standby does nothing. Killing the leader (SIGKILL) in the
  middle of a certificate rotation, the standby takes the Lease and finishes it: every broker process serves the
  new certificate and status says so. Then the new leader is stopped (SIGTERM) in the middle of the next
  rotation: it releases the Lease, a third replica takes over and finishes that one too.

Printed (run with -s): deletion times, and the fail-over times (kill → the standby holds the Lease → every pod
serves the new certificate). The recheck and resync intervals are an hour here, so what finishes a rotation is
the new leader's start, not a timer.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import kubernetes
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubelet_harness import KubeletHarness
from kubernetes.client import ApiException
from operator_support import example_broker, install_operator_identity, pinned_helm, running_operator, tls_secret
from realapi_support import absent, unique_name, wait_for
from test_drift import _create_broker
from test_rotation_e2e import (
    BROKER,
    LISTENERS,
    REPLICAS,
    Authority,
    _broker_body,
    _listener_status,
    _status,
    create_rotor_secrets,
    fingerprint,
    tls_secret_data,
)

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
OLD_FINALIZER = "operator.mqtt.wharf.dev/finalizer"  # what kopf put on every MQTTBroker for the timers before
# The operator's log lines of its Secret handler (kopf's, with --verbose): started, and done (pods signalled).
SIGNALLING, SIGNALLED = "secret_event' is invoked", "secret_event' succeeded"
QUICK = 30  # seconds: a deletion nothing blocks is over long before (a finalizer would block it forever)


def _owned(api, namespace: str, uid: str) -> list[str]:
    """"Kind/name" of every object in the namespace whose owner is the MQTTBroker with this uid."""
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    policy = kubernetes.client.PolicyV1Api(api)
    found = []
    for kind, items in (("StatefulSet", apps.list_namespaced_stateful_set(namespace).items),
                        ("ConfigMap", core.list_namespaced_config_map(namespace).items),
                        ("Service", core.list_namespaced_service(namespace).items),
                        ("ServiceAccount", core.list_namespaced_service_account(namespace).items),
                        ("Secret", core.list_namespaced_secret(namespace).items),
                        ("PodDisruptionBudget", policy.list_namespaced_pod_disruption_budget(namespace).items)):
        found += [f"{kind}/{o.metadata.name}" for o in items
                  if any(ref.uid == uid for ref in o.metadata.owner_references or [])]
    return found


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("mqttbroker_crd")
def test_deletion_needs_no_running_operator(controlplane, api, namespace, tmp_path):
    core = kubernetes.client.CoreV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)
    other = unique_name("t")
    core.create_namespace({"metadata": {"name": other}})
    wait_for(lambda: core.read_namespaced_service_account("default", other), f"default ServiceAccount in {other}")
    (tmp_path / "helm-home").mkdir()
    kubeconfig, _, _ = install_operator_identity(controlplane, api, pinned_helm(), tmp_path / "helm-home", tmp_path,
                                                 watch=[namespace, other])

    name, uid = _create_broker(api, namespace)
    # One as an older operator version left it: with kopf's finalizer for its timers.
    legacy = example_broker("one-way-tls.yaml")
    legacy["metadata"] = {"name": f"{name}-legacy", "finalizers": [OLD_FINALIZER]}
    legacy["spec"]["replicas"] = 1
    legacy_uid = brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, legacy)["metadata"]["uid"]
    # And one in a namespace that will be deleted whole.
    core.create_namespaced_secret(other, tls_secret("wharf-tls", "wharf.test"))
    in_other = example_broker("one-way-tls.yaml")
    in_other["metadata"] = {"name": "doomed"}
    in_other["spec"] = {**in_other["spec"], "replicas": 1}
    in_other["spec"].pop("authentication", None)  # its users Secret and ACL ConfigMap live in the other namespace
    in_other["spec"].pop("authorization", None)
    brokers.create_namespaced_custom_object(GROUP, VERSION, other, PLURAL, in_other)

    log = tmp_path / "operator.log"
    apps = kubernetes.client.AppsV1Api(api)
    with running_operator(kubeconfig, log, namespaces=[namespace, other], pod_cidr=controlplane.pod_cidr):
        for ns, broker in ((namespace, name), (namespace, f"{name}-legacy"), (other, "doomed")):
            wait_for(lambda ns=ns, broker=broker: apps.read_namespaced_stateful_set(broker, ns),
                     f"StatefulSet {ns}/{broker} (reconciled)", timeout=60)
        wait_for(lambda: not (brokers.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                    f"{name}-legacy")["metadata"].get("finalizers")),
                 "the older version's finalizer to be removed", timeout=60)
        for ns, broker in ((namespace, name), (other, "doomed")):
            body = brokers.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, broker)
            assert not body["metadata"].get("finalizers"), body["metadata"]
    # The operator has stopped.
    assert _owned(api, namespace, uid) and _owned(api, namespace, legacy_uid)

    started = time.monotonic()
    for broker in (name, f"{name}-legacy"):
        brokers.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, broker)
    for broker in (name, f"{name}-legacy"):
        wait_for(lambda broker=broker: absent(lambda: brokers.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, broker)), f"MQTTBroker {broker} deleted", timeout=QUICK)
    deleted = time.monotonic() - started
    wait_for(lambda: not _owned(api, namespace, uid) and not _owned(api, namespace, legacy_uid),
             "owned objects garbage-collected", timeout=120)
    collected = time.monotonic() - started

    started = time.monotonic()
    core.delete_namespace(other)
    wait_for(lambda: absent(lambda: core.read_namespace(other)), f"namespace {other} deleted", timeout=180)
    namespace_deleted = time.monotonic() - started
    print(f"\noperator stopped: MQTTBrokers deleted in {deleted:.2f}s, owned objects collected in {collected:.2f}s; "
          f"namespace with an MQTTBroker deleted in {namespace_deleted:.2f}s")


def _holder(api, namespace: str, lease: str) -> str:
    try:
        spec = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(lease, namespace).spec
    except ApiException as error:
        if error.status == 404:
            return ""
        raise
    return spec.holder_identity or ""


def _rotate(core, namespace: str, authority: Authority) -> str:
    key, cert = authority.issue("rotor.e2e.test", ExtendedKeyUsageOID.SERVER_AUTH)
    core.patch_namespaced_secret("rotor-tls", namespace, {"stringData": tls_secret_data(authority, key, cert)})
    return fingerprint(cert)


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("mqttbroker_crd")
def test_leader_fails_over_mid_rotation(controlplane, api, namespace, tmp_path):
    core = kubernetes.client.CoreV1Api(api)
    brokers = kubernetes.client.CustomObjectsApi(api)
    authority = Authority.create("ha-ca")
    first_cert, probe = create_rotor_secrets(core, namespace, authority, "ha-client", tmp_path)
    (tmp_path / "helm-home").mkdir()
    kubeconfig, operator_namespace, account = install_operator_identity(
        controlplane, api, pinned_helm(), tmp_path / "helm-home", tmp_path, watch=[namespace])
    lease = account  # the chart's Role grants the Lease named as the release (its ServiceAccount's name)
    elect = ["--leader-elect", f"--leader-election-namespace={operator_namespace}", f"--leader-election-id={lease}",
             "--recheck-interval=3600", "--resync-interval=3600"]
    logs = {replica: tmp_path / f"operator-{replica}.log" for replica in ("a", "b", "c")}

    def replica(stack: ExitStack, name: str):
        return stack.enter_context(running_operator(kubeconfig, logs[name], [namespace], controlplane.pod_cidr,
                                                    extra_args=elect, extra_env={"POD_NAME": f"op-{name}"}))

    def serving(targets, current: str) -> list[str]:
        return [f"{name}/{listener}" for name, ip, listener, port in targets if probe.served(ip, port) == current]

    def finished(current: str) -> dict:
        """Status once every listener records ``current`` on every pod, no error."""
        return wait_for(lambda: (s := _status(brokers, namespace)) and all(
            (r := _listener_status(s, listener)).get("fingerprint") == current and r.get("podsServing") == REPLICAS
            and r.get("podsTotal") == REPLICAS and not r.get("lastError") for listener in LISTENERS) and s,
            "status: every pod serves the new certificate", timeout=60)

    def mid_rotation(name: str, before: int) -> None:
        """Wait until replica ``name`` has started handling the rotated Secret (it is signalling the pods)."""
        wait_for(lambda: logs[name].read_text().count(SIGNALLING) > before, f"op-{name} to handle the Secret",
                 timeout=30, interval=0.02)

    selector = f"app.kubernetes.io/instance={BROKER}"
    with ExitStack() as stack:
        # Slow volume sync, as a kubelet's: pods see a rotated Secret a while after it is written, so the leader
        # is still waiting for their reloads when it is killed.
        kubelet = stack.enter_context(KubeletHarness(api, namespace, selector, tmp_path / "pods", sync_interval=4.0))
        a = replica(stack, "a")
        wait_for(lambda: _holder(api, operator_namespace, lease).startswith("op-a_"), "op-a to hold the Lease",
                 timeout=60)
        b = replica(stack, "b")
        brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _broker_body())
        pods = wait_for(lambda: (running := kubelet.running()) and len(running) == REPLICAS and running,
                        f"{REPLICAS} broker processes", timeout=120)
        targets = [(pod.name, pod.ip, listener, port) for pod in pods.values() for listener, port in LISTENERS.items()]
        first = fingerprint(first_cert)
        wait_for(lambda: len(serving(targets, first)) == len(targets), "every pod serving the first certificate",
                 timeout=60)
        wait_for(lambda: _listener_status(_status(brokers, namespace), "tls").get("fingerprint") == first,
                 "status to show the first fingerprint", timeout=60)
        # The standby stands by: it has not reconciled anything.
        assert "reconciled" not in logs["b"].read_text() and "standing by" in logs["b"].read_text()
        assert _holder(api, operator_namespace, lease).startswith("op-a_")

        # 1. SIGKILL the leader in the middle of a rotation.
        before = logs["a"].read_text().count(SIGNALLING)
        second = _rotate(core, namespace, authority)
        mid_rotation("a", before)
        killed = time.monotonic()
        a.kill()
        a.wait(10)
        at_kill = serving(targets, second)
        assert logs["a"].read_text().count(SIGNALLED) == before, "the rotation was over before the kill"
        wait_for(lambda: _holder(api, operator_namespace, lease).startswith("op-b_"), "op-b to take the Lease",
                 timeout=60, interval=0.1)
        took_over = time.monotonic() - killed
        wait_for(lambda: len(serving(targets, second)) == len(targets), "every pod serving the second certificate",
                 timeout=90, interval=0.2)
        all_serving = time.monotonic() - killed
        finished(second)
        print(f"\nleader killed (SIGKILL) with {len(at_kill)}/{len(targets)} listeners serving the new certificate: "
              f"standby holds the Lease after {took_over:.2f}s, every pod serves it after {all_serving:.2f}s")
        assert "reconciled" in logs["b"].read_text()  # the status above is the new leader's: op-a wrote none

        # 2. Stop (SIGTERM) the new leader in the middle of the next rotation: it releases the Lease.
        c = replica(stack, "c")
        assert "standing by" in logs["c"].read_text()
        before = logs["b"].read_text().count(SIGNALLING)
        third = _rotate(core, namespace, authority)
        mid_rotation("b", before)
        stopped = time.monotonic()
        b.terminate()
        at_stop = serving(targets, third)
        wait_for(lambda: _holder(api, operator_namespace, lease).startswith("op-c_"), "op-c to take the Lease",
                 timeout=60, interval=0.1)
        took_over = time.monotonic() - stopped
        b.wait(30)
        wait_for(lambda: len(serving(targets, third)) == len(targets), "every pod serving the third certificate",
                 timeout=90, interval=0.2)
        all_serving = time.monotonic() - stopped
        finished(third)
        print(f"leader stopped (SIGTERM) with {len(at_stop)}/{len(targets)} listeners serving the new certificate: "
              f"standby holds the Lease after {took_over:.2f}s, every pod serves it after {all_serving:.2f}s")
        assert "released Lease" in logs["b"].read_text()
        transitions = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(
            lease, operator_namespace).spec.lease_transitions
        assert transitions == 2, transitions
        assert c.poll() is None and not kubelet.errors, kubelet.errors
