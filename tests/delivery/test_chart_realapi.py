"""The chart on a real kube-apiserver: it installs, and its RBAC is enough for the real operator, in both modes.

`helm install --wait` into the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok
for Pods; built by `make controlplane`), then the real `wharf-operator` runs on this machine with the token of
the chart's ServiceAccount, so every request it makes is authorised by the chart's (Cluster)Role alone. It must
reconcile an MQTTBroker without a single forbidden request. Skipped when the control plane is not built.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import yaml
from delivery_support import CHART, ROOT, Helm

from tests.support import wait_until

pytestmark = [pytest.mark.realapi, pytest.mark.slow]

sys.path.insert(0, str(ROOT / "tools" / "controlplane"))
import localcluster  # noqa: E402

kubernetes = pytest.importorskip("kubernetes")
CERTS = ROOT / "etc" / "certs"


@pytest.fixture(scope="module")
def core(plane: localcluster.LocalControlPlane):
    client = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    try:
        yield kubernetes.client.CoreV1Api(client)
    finally:
        client.close()


def _missing(error: BaseException) -> bool:
    """A 404 while the operator creates the object: not there yet."""
    return isinstance(error, kubernetes.client.ApiException) and error.status == 404


wait_for = partial(wait_until, timeout=90.0, interval=0.5, ignore=_missing)


def service_account_kubeconfig(plane, core, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount only (bearer token, no client certificate)."""
    request = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = core.create_namespaced_service_account_token(name, namespace, request).status.token
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    cluster = dict(admin["clusters"][0]["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "plane", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "plane", "user": "sa"}}]}))
    return path


def create_broker(core, namespace: str, name: str) -> None:
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": f"{name}-tls"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode((CERTS / "server.crt").read_bytes()).decode(),
                 "tls.key": base64.b64encode((CERTS / "server.key").read_bytes()).decode()}})
    api = kubernetes.client.CustomObjectsApi(core.api_client)
    api.create_namespaced_custom_object("mqtt.wharf.dev", "v1alpha1", namespace, "mqttbrokers", {
        "apiVersion": "mqtt.wharf.dev/v1alpha1", "kind": "MQTTBroker", "metadata": {"name": name},
        "spec": {"replicas": 1, "listeners": [
            {"name": "mqtts", "type": "ssl", "port": 8883, "tls": {"secretName": f"{name}-tls"}}]}})


def run_operator_until_reconciled(kubeconfig: Path, args: list[str], core, namespace: str, name: str,
                                  log: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "wharf_operator", "--kubeconfig", str(kubeconfig),
                                    "--liveness", "", "--metrics-port", "0", *args],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            apps = kubernetes.client.AppsV1Api(core.api_client)
            wait_for(lambda: apps.read_namespaced_stateful_set(name, namespace), f"StatefulSet {namespace}/{name}")
            api = kubernetes.client.CustomObjectsApi(core.api_client)
            wait_for(lambda: api.get_namespaced_custom_object("mqtt.wharf.dev", "v1alpha1", namespace,
                                                              "mqttbrokers", name).get("status", {})
                     .get("observedGeneration"), "the MQTTBroker's status")
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    return log.read_text()


def leader_election(namespace: str, lease: str) -> list[str]:
    """The leader-election arguments the chart's Deployment passes (its Role grants only this Lease)."""
    return ["--leader-elect", f"--leader-election-namespace={namespace}", f"--leader-election-id={lease}"]


def install(helm: Helm, plane, release: str, namespace: str, *values: str) -> None:
    args = ["--kubeconfig", str(plane.kubeconfig), "install", release, str(CHART), "--namespace", namespace,
            "--create-namespace", "--wait", "--timeout", "3m"]
    for value in values:
        args += ["--set", value]
    helm.run(*args)


def uninstall(helm: Helm, plane, release: str, namespace: str) -> None:
    helm.run("--kubeconfig", str(plane.kubeconfig), "uninstall", release, "--namespace", namespace, "--wait")


def test_cluster_wide_install_is_enough_for_the_operator(helm: Helm, plane, core, tmp_path: Path) -> None:
    install(helm, plane, "wharf", "wharf-system")
    try:
        kubeconfig = service_account_kubeconfig(plane, core, "wharf-system", "wharf", tmp_path / "sa.kubeconfig")
        core.create_namespace({"metadata": {"name": "tenant-one"}})
        create_broker(core, "tenant-one", "broker")
        # As the chart's Deployment runs it: with leader election on the release's Lease.
        log = run_operator_until_reconciled(kubeconfig, leader_election("wharf-system", "wharf"), core,
                                            "tenant-one", "broker", tmp_path / "op.log")
        assert "forbidden" not in log.lower(), log[-3000:]
        assert "wharf_operator.leader: leader election: " in log and " holds Lease wharf-system/wharf" in log
    finally:
        uninstall(helm, plane, "wharf", "wharf-system")


def test_namespaced_install_is_enough_for_the_operator(helm: Helm, plane, core, tmp_path: Path) -> None:
    # The watched namespace exists first: the chart puts its Role there.
    core.create_namespace({"metadata": {"name": "tenant-two"}})
    install(helm, plane, "wharf-ns", "wharf-ns-system", "operator.watchNamespaces={tenant-two}")
    try:
        rbac = kubernetes.client.RbacAuthorizationV1Api(core.api_client)
        # Cluster-wide only get/patch on the MQTTBroker CRD (crds.upgrade), and the roles for people, bound to nobody.
        bindings = rbac.list_cluster_role_binding(label_selector="app.kubernetes.io/instance=wharf-ns").items
        assert [b.role_ref.name for b in bindings] == ["wharf-ns-crd"]
        (crd_role,) = [r for r in rbac.list_cluster_role(label_selector="app.kubernetes.io/instance=wharf-ns").items
                       if r.metadata.name == "wharf-ns-crd"]
        assert [(r.resources, r.resource_names, r.verbs) for r in crd_role.rules] == \
            [(["customresourcedefinitions"], ["mqttbrokers.mqtt.wharf.dev"], ["get", "patch"])]
        assert [r.metadata.name for r in rbac.list_namespaced_role("tenant-two").items] == ["wharf-ns"]
        # and the leader election's, for the Lease in the release namespace
        assert [r.metadata.name for r in rbac.list_namespaced_role("wharf-ns-system").items] == \
            ["wharf-ns-leader-election"]
        kubeconfig = service_account_kubeconfig(plane, core, "wharf-ns-system", "wharf-ns",
                                                tmp_path / "sa.kubeconfig")
        create_broker(core, "tenant-two", "broker")
        log = run_operator_until_reconciled(kubeconfig, ["--namespace", "tenant-two", "--apply-crd",
                                                         *leader_election("wharf-ns-system", "wharf-ns")],
                                            core, "tenant-two", "broker", tmp_path / "op.log")
        assert "forbidden" not in log.lower(), log[-3000:]
        assert "CRD mqttbrokers.mqtt.wharf.dev is current" in log, log[-3000:]
        assert " holds Lease wharf-ns-system/wharf-ns" in log, log[-3000:]
    finally:
        uninstall(helm, plane, "wharf-ns", "wharf-ns-system")
