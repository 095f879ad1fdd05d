"""One source of truth: the chart's CRDs are copies of manifests/crds/, the kubectl bundle is the rendered chart."""

from __future__ import annotations

import subprocess

import yaml
from delivery_support import CHART, ROOT, Helm, find, kubernetes_errors, SUPPORTED_KUBERNETES

BUNDLE = ROOT / "manifests" / "operator" / "wharf-operator.yaml"


def run_script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_chart_crds_match_manifests() -> None:
    proc = run_script("sync-chart-crds.sh", "--check")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == \
        sorted(p.name for p in (ROOT / "manifests" / "crds").glob("*.yaml"))


def test_crd_check_notices_a_stale_copy(tmp_path) -> None:
    """The check is not vacuous: it fails on a copy of the tree whose chart CRD was edited."""
    import shutil
    copy = tmp_path / "repo"
    for part in ("scripts", "manifests/crds", "charts/wharf/crds"):
        shutil.copytree(ROOT / part, copy / part)
    crd = next((copy / "charts/wharf/crds").glob("*.yaml"))
    crd.write_text(crd.read_text() + "# edited by hand\n")
    proc = subprocess.run([str(copy / "scripts/sync-chart-crds.sh"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "run scripts/sync-chart-crds.sh" in proc.stderr


def test_kubectl_bundle_is_the_rendered_chart(helm: Helm) -> None:
    proc = run_script("generate-manifests.sh", "--check", env={"PATH": "/usr/bin:/bin", "HELM": helm.binary,
                                                               "HOME": helm.env["HOME"]})
    assert proc.returncode == 0, proc.stderr


def test_kubectl_bundle_installs_what_the_chart_installs(helm: Helm) -> None:
    bundle = [doc for doc in yaml.safe_load_all(BUNDLE.read_text()) if doc]
    chart = helm.template()
    key = lambda o: (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, bundle), key=str) == \
        sorted([*map(key, chart), ("Namespace", None, "wharf-system")], key=str)
    (namespace,) = find(bundle, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in bundle:
        assert kubernetes_errors(obj, SUPPORTED_KUBERNETES[-1]) == []
        if obj["kind"] != "Namespace" and "namespace" in obj["metadata"]:
            assert obj["metadata"]["namespace"] == "wharf-system"


def test_crds_are_valid_kubernetes_objects() -> None:
    for path in (ROOT / "manifests" / "crds").glob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            for version in SUPPORTED_KUBERNETES:
                assert kubernetes_errors(obj, version) == [], path.name
