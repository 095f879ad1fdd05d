"""Session fixtures: one real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) on 127.0.0.1 for every test in this folder.

The binaries are built by `make controlplane` (tools/controlplane/build.sh). When they are
not built and cannot be (no Go toolchain), every test here is skipped with the reason; set
WHARF_BUILD_CONTROLPLANE=1 to let the fixture build them itself (a cold build takes long), and
WHARF_REQUIRE_REALAPI=1 (CI) to fail instead of skipping. The same holds for cert-manager's
controller (`make cert-manager`, tools/controlplane/build-cert-manager.sh), which the ``cert_manager``
fixture runs, with its CRDs installed, for the tests that ask for it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException

# Test modules import realapi_support by name (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import certmanager_support
import realapi_support
from realapi_support import admin_client, localcluster, project_crds, unique_name, wait_for


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.realapi)


@pytest.fixture(scope="session")
def controlplane_binaries() -> Path:
    build = os.environ.get("WHARF_BUILD_CONTROLPLANE") == "1"
    try:
        return localcluster.locate_binaries(build=build)
    except localcluster.ControlPlaneUnavailable as reason:
        if os.environ.get("WHARF_REQUIRE_REALAPI") == "1":  # CI: a missing build is a failure, not a skip
            pytest.fail(f"real Kubernetes control plane unavailable: {reason}")
        pytest.skip(f"real Kubernetes control plane unavailable: {reason}")


@pytest.fixture(scope="session")
def controlplane(controlplane_binaries: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[localcluster.LocalControlPlane]:
    plane = localcluster.LocalControlPlane(tmp_path_factory.mktemp("controlplane"), controlplane_binaries)
    plane.start()
    realapi_support.pod_network = ipaddress.ip_network(plane.pod_cidr)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def cert_manager(controlplane: localcluster.LocalControlPlane, api: kubernetes.client.ApiClient,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """cert-manager's CRDs installed and its controller running (for the rest of the session);
    yields the controller's log file."""
    build = os.environ.get("WHARF_BUILD_CONTROLPLANE") == "1"
    try:
        root = certmanager_support.locate(build=build)
    except certmanager_support.CertManagerUnavailable as reason:
        if os.environ.get("WHARF_REQUIRE_REALAPI") == "1":
            pytest.fail(f"cert-manager controller unavailable: {reason}")
        pytest.skip(f"cert-manager controller unavailable: {reason}")
    certmanager_support.install_crds(api, root / "crds")
    workdir = tmp_path_factory.mktemp("cert-manager")
    with certmanager_support.running_controller(root, controlplane.kubeconfig, workdir):
        yield workdir / "cert-manager.log"


@pytest.fixture(scope="session")
def api(controlplane: localcluster.LocalControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    client = admin_client(controlplane.kubeconfig)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(api: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace, deleted (not awaited) after the test."""
    core = kubernetes.client.CoreV1Api(api)
    name = unique_name("t")
    core.create_namespace({"metadata": {"name": name}})
    # Pods need the namespace's default ServiceAccount (ServiceAccount admission).
    wait_for(lambda: core.read_namespaced_service_account("default", name), f"default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name)


MQTTBROKER_CRD = "mqttbrokers.mqtt.wharf.dev"


@pytest.fixture(scope="session")
def mqttbroker_crd(api: kubernetes.client.ApiClient) -> None:
    """The project's MQTTBroker CRD, installed once and Established."""
    files = [path for path in project_crds() if path.name == f"{MQTTBROKER_CRD}.yaml"]
    if not files:
        pytest.fail(f"manifests/crds/{MQTTBROKER_CRD}.yaml is missing")
    extensions = kubernetes.client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(yaml.safe_load(files[0].read_text()))
    except ApiException as error:
        if error.status != 409:  # installed already (a test of the CRD itself, or an earlier run's leftover)
            raise
    wait_for(lambda: any(c.type == "Established" and c.status == "True"
                         for c in extensions.read_custom_resource_definition(MQTTBROKER_CRD).status.conditions or []),
             "MQTTBroker CRD Established")


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The pinned helm binary, and a HOME of its own for its config and caches."""
    from operator_support import pinned_helm

    return pinned_helm(), tmp_path_factory.mktemp("helm-home")
