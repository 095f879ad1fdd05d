"""`helm upgrade` from an earlier chart on a real kube-apiserver: the CRD is upgraded, and people get MQTTBrokers
through the built-in view/edit roles.

Helm installs a chart's crds/ once and never upgrades them. The earlier chart (as of OLD_CHART_COMMIT, taken from
git history) has a CRD without spec.durableStorage: after `helm upgrade` to this chart the API server still prunes
that field, until the real `wharf-operator --apply-crd`, running with the token of the chart's ServiceAccount (so
with the chart's RBAC alone), applies its own CRD at start. Then the field is stored, and validated. The operator
also removes a field the new schema dropped, and leaves a newer schema alone. Skipped when the control plane is
not built. Without the git history (a shallow clone or an export), the earlier chart is this chart with its CRD
taken back to before spec.durableStorage and the schema-revision annotations.
"""

from __future__ import annotations

import asyncio
import copy
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterator

import pytest
from delivery_support import CHART, ROOT, Helm

pytestmark = [pytest.mark.realapi, pytest.mark.slow, pytest.mark.timeout(900)]

sys.path.insert(0, str(ROOT / "tools" / "controlplane"))
import localcluster  # noqa: E402

kubernetes = pytest.importorskip("kubernetes")
from test_chart_realapi import (  # noqa: E402
    create_broker,
    run_operator_until_reconciled,
    service_account_kubeconfig,
    wait_for,
)

# The last chart whose CRD lacks spec.durableStorage (added by the next commit to the CRD).
OLD_CHART_COMMIT = "859c1d74d947e250ef9efdad801dc63e4749df7e"
GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
CRD_NAME = f"{PLURAL}.{GROUP}"
RELEASE, NAMESPACE, TENANT = "wharf", "wharf-system", "tenant-up"


@pytest.fixture(scope="module")
def old_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("old-chart")
    proc = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", OLD_CHART_COMMIT, "charts/wharf"],
                          capture_output=True, timeout=60)
    if proc.returncode == 0:
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as archive:
            archive.extractall(target, filter="data")
        chart = target / "charts" / "wharf"
    else:
        chart = _derived_old_chart(target / "wharf")
    assert "durableStorage" not in (chart / "crds" / f"{CRD_NAME}.yaml").read_text()
    assert "durableStorage" in (CHART / "crds" / f"{CRD_NAME}.yaml").read_text()
    return chart


def _derived_old_chart(chart: Path) -> Path:
    """This chart with its CRD as it was before spec.durableStorage and the schema-revision annotations."""
    import shutil

    import yaml

    shutil.copytree(CHART, chart)
    path = chart / "crds" / f"{CRD_NAME}.yaml"
    crd = yaml.safe_load(path.read_text())
    annotations = crd["metadata"].get("annotations") or {}
    for key in [key for key in annotations if key.startswith(GROUP)]:
        del annotations[key]
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"].pop("durableStorage", None)
        spec["x-kubernetes-validations"] = [rule for rule in spec.get("x-kubernetes-validations") or []
                                            if "durableStorage" not in rule.get("rule", "")]
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


@pytest.fixture(scope="module")
def admin(plane: localcluster.LocalControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def helm_to(helm: Helm, plane, command: str, chart: Path) -> None:
    helm.run("--kubeconfig", str(plane.kubeconfig), command, RELEASE, str(chart), "--namespace", NAMESPACE,
             "--create-namespace", "--wait", "--timeout", "3m")


@pytest.fixture(scope="module")
def upgraded(helm: Helm, plane, admin, old_chart: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The earlier chart installed, then `helm upgrade` to this one; the ServiceAccount's kubeconfig."""
    helm_to(helm, plane, "install", old_chart)
    helm_to(helm, plane, "upgrade", CHART)
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": TENANT}})
    try:
        yield service_account_kubeconfig(plane, core, NAMESPACE, RELEASE,
                                         tmp_path_factory.mktemp("sa") / "sa.kubeconfig")
    finally:
        helm.run("--kubeconfig", str(plane.kubeconfig), "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")


def installed_crd(admin) -> dict:
    return kubernetes.client.ApiextensionsV1Api(admin).read_custom_resource_definition(CRD_NAME).to_dict()


def durable_broker(name: str, **durable: object) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": name},
            "spec": {"listeners": [{"name": "mqtt", "type": "tcp", "port": 1883}],
                     "durableStorage": {"enabled": True, **durable}}}


def test_helm_upgrade_then_the_operator_upgrades_the_crd(admin, upgraded: Path, tmp_path: Path) -> None:
    from wharf_operator import crd

    brokers = kubernetes.client.CustomObjectsApi(admin)
    # After `helm upgrade` the old schema is still in force: the new field is pruned, a bad value not refused.
    before = installed_crd(admin)
    assert crd.REVISION_ANNOTATION not in (before["metadata"].get("annotations") or {})
    stored = brokers.create_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL,
                                                     durable_broker("before", synchronous="sometimes"))
    assert "durableStorage" not in stored["spec"]

    core = kubernetes.client.CoreV1Api(admin)
    create_broker(core, TENANT, "broker")
    log = run_operator_until_reconciled(upgraded, ["--apply-crd", "--all-namespaces"], core, TENANT, "broker",
                                        tmp_path / "operator.log")
    assert "forbidden" not in log.lower(), log[-3000:]
    assert f"upgraded the installed CRD {CRD_NAME} to schema revision {crd.SCHEMA_REVISION}" in log, log[-3000:]

    after = installed_crd(admin)
    annotations = after["metadata"]["annotations"]
    assert annotations[crd.REVISION_ANNOTATION] == str(crd.SCHEMA_REVISION)
    assert annotations[crd.DIGEST_ANNOTATION] == crd.crd_manifest()["metadata"]["annotations"][crd.DIGEST_ANNOTATION]
    managers = {(m["manager"], m["operation"]) for m in after["metadata"]["managed_fields"]}
    assert ("wharf-operator", "Apply") in managers
    # The new schema is in force (the API server switches within moments): the field is stored and defaulted,
    # and validated.
    wait_for(lambda: "durableStorage" in brokers.create_namespaced_custom_object(
        GROUP, VERSION, TENANT, PLURAL, durable_broker("after"), dry_run="All")["spec"], "the new schema in force")
    stored = brokers.create_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL,
                                                     durable_broker("after", size="2Gi"))
    assert stored["spec"]["durableStorage"] == {"enabled": True, "size": "2Gi", "synchronous": "full"}
    with pytest.raises(kubernetes.client.ApiException) as refused:
        brokers.create_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL,
                                                durable_broker("bad", synchronous="sometimes"))
    assert refused.value.status == 422
    assert "synchronous" in refused.value.body and "sometimes" in refused.value.body
    clustered = durable_broker("clustered")
    clustered["spec"]["cluster"] = {"nats": {"deploy": True}}
    with pytest.raises(kubernetes.client.ApiException) as refused:
        brokers.create_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL, clustered)
    assert "durableStorage is for standalone brokers" in refused.value.body

    # A second start finds the CRD current and writes nothing.
    version = after["metadata"]["resource_version"]
    assert run_ensure(upgraded) == "current"
    assert installed_crd(admin)["metadata"]["resource_version"] == version


def run_ensure(kubeconfig: Path) -> str:
    """One CRD check as the operator makes it at start, with the ServiceAccount's credentials."""
    from wharf_operator import credentials, crd_upgrade

    async def ensure() -> str:
        api = credentials.load(str(kubeconfig)).api()
        try:
            return await crd_upgrade.ensure_current(api)
        finally:
            await api.close()

    return asyncio.run(ensure())


def test_a_field_the_new_schema_dropped_is_removed_and_a_newer_schema_kept(admin, upgraded: Path) -> None:
    """An installed CRD of a lower revision with a property the operator's schema no longer has (created, as Helm
    does, by another field manager): the operator's apply removes it. A higher revision is never touched."""
    from wharf_operator import crd

    extensions = kubernetes.client.ApiextensionsV1Api(admin)
    live = installed_crd(admin)
    older = copy.deepcopy(crd.crd_manifest())
    older["metadata"]["annotations"] = {crd.REVISION_ANNOTATION: "0"}
    older["metadata"]["resourceVersion"] = live["metadata"]["resource_version"]
    spec_props = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    spec_props["legacyKnob"] = {"type": "string", "description": "A field of an earlier schema."}
    # A version the earlier CRD served (never stored): the versions list merges by name, so only the owner of that
    # entry removes it, and Helm made it.
    retired = copy.deepcopy(older["spec"]["versions"][0])
    retired.update(name="v1alpha0", served=False, storage=False)
    retired.pop("subresources", None)
    older["spec"]["versions"].append(retired)
    extensions.replace_custom_resource_definition(CRD_NAME, older, field_manager="helm")

    def legacy() -> tuple[bool, list[str]]:
        versions = installed_crd(admin)["spec"]["versions"]
        schema = versions[0]["schema"]["open_apiv3_schema"]
        return "legacyKnob" in schema["properties"]["spec"]["properties"], [v["name"] for v in versions]

    assert legacy() == (True, [VERSION, "v1alpha0"])
    assert run_ensure(upgraded) == "applied"
    assert legacy() == (False, [VERSION])
    assert installed_crd(admin)["metadata"]["annotations"][crd.REVISION_ANNOTATION] == str(crd.SCHEMA_REVISION)

    newer = installed_crd(admin)
    extensions.patch_custom_resource_definition(CRD_NAME, {"metadata": {"annotations": {
        crd.REVISION_ANNOTATION: str(crd.SCHEMA_REVISION + 1)}}})
    version = installed_crd(admin)["metadata"]["resource_version"]
    assert version != newer["metadata"]["resource_version"]
    assert run_ensure(upgraded) == "newer"
    assert installed_crd(admin)["metadata"]["resource_version"] == version


def test_without_the_crd_role_the_operator_names_the_manual_step(admin, upgraded: Path) -> None:
    """crds.upgrade=false grants nothing on the CRD: the check fails with the pre-upgrade step to run instead."""
    from wharf_operator import crd_upgrade

    kubernetes.client.RbacAuthorizationV1Api(admin).delete_cluster_role_binding(f"{RELEASE}-crd")

    def refused() -> str | None:
        try:
            run_ensure(upgraded)
        except crd_upgrade.CrdUpgradeError as error:
            return str(error)
        return None

    message = wait_for(refused, "the CRD role's removal to take effect")
    assert "HTTP 403" in message and crd_upgrade.MANUAL_STEP in message


def impersonating(plane, user: str) -> kubernetes.client.ApiClient:
    client = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    client.set_default_header("Impersonate-User", user)
    return client


def test_view_and_edit_roles_cover_mqttbrokers(admin, plane, upgraded: Path) -> None:
    """The chart's ClusterRoles aggregate into the built-in ones: a RoleBinding to view lets a user read
    MQTTBrokers and their status but not create them; one to edit lets a user create, scale and delete them."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    for user, role in (("vera", "view"), ("eddie", "edit")):
        rbac.create_namespaced_role_binding(TENANT, {
            "metadata": {"name": f"{user}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    broker = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": "shared"},
              "spec": {"listeners": [{"name": "mqtt", "type": "tcp", "port": 1883}]}}
    kubernetes.client.CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL, broker)

    vera, eddie = impersonating(plane, "vera"), impersonating(plane, "eddie")
    try:
        as_vera, as_eddie = kubernetes.client.CustomObjectsApi(vera), kubernetes.client.CustomObjectsApi(eddie)
        # The aggregation controller fills view/edit from the chart's roles shortly after they exist.
        listed = wait_for(lambda: allowed(lambda: as_vera.list_namespaced_custom_object(GROUP, VERSION, TENANT,
                                                                                          PLURAL)),
                          "view to cover mqttbrokers")
        assert "shared" in {item["metadata"]["name"] for item in listed["items"]}
        assert as_vera.get_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL, "shared")
        assert as_vera.get_namespaced_custom_object_status(GROUP, VERSION, TENANT, PLURAL, "shared")
        other = dict(broker, metadata={"name": "by-vera"})
        assert status_of(lambda: as_vera.create_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL, other)) \
            == 403
        assert status_of(lambda: as_vera.delete_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL,
                                                                         "shared")) == 403

        created = wait_for(lambda: allowed(lambda: as_eddie.create_namespaced_custom_object(
            GROUP, VERSION, TENANT, PLURAL, dict(broker, metadata={"name": "by-eddie"}))), "edit to cover mqttbrokers")
        assert created["metadata"]["name"] == "by-eddie"
        scaled = as_eddie.patch_namespaced_custom_object_scale(GROUP, VERSION, TENANT, PLURAL, "by-eddie",
                                                               {"spec": {"replicas": 2}})
        assert scaled["spec"]["replicas"] == 2
        # Status is the operator's: not even an editor writes it.
        assert status_of(lambda: as_eddie.patch_namespaced_custom_object_status(
            GROUP, VERSION, TENANT, PLURAL, "by-eddie", {"status": {"readyReplicas": 9}})) == 403
        as_eddie.delete_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL, "by-eddie")
        # Neither role reaches another namespace.
        assert status_of(lambda: as_eddie.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)) == 403
    finally:
        vera.close()
        eddie.close()


def allowed(call):
    """The call's result, or None while the API server still answers 403 (roles not aggregated yet)."""
    try:
        return call()
    except kubernetes.client.ApiException as error:
        if error.status == 403:
            return None
        raise


def status_of(call) -> int:
    try:
        call()
    except kubernetes.client.ApiException as error:
        return error.status
    return 200
