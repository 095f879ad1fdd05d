"""Shared by the delivery checks: paths, the pinned helm, rendering, the CRD, and object lookups."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "wharf"
CRD_DIR = ROOT / "manifests" / "crds"

# Oldest and newest Kubernetes versions the chart supports (Chart.yaml kubeVersion is the floor), and one between.
SUPPORTED_KUBERNETES = ["1.27.0", "1.31.0", "1.35.0"]


class Helm:
    """The project's pinned helm, with its config and caches in a throw-away HOME."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "HOME": str(home)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def template(self, *sets: str, namespace: str = "wharf-system", release: str = "wharf",
                 kube_version: str | None = None) -> list[dict]:
        """Render the chart and return its objects (empty documents dropped)."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        if kube_version:
            args += ["--kube-version", kube_version]
        for value in sets:
            args += ["--set", value]
        return [doc for doc in yaml.safe_load_all(self.run(*args).stdout) if doc]


def pinned_helm(home: Path) -> Helm:
    ensure = ROOT / "tools" / "helm" / "ensure-helm.sh"
    proc = subprocess.run([str(ensure)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"cannot get the pinned helm: {proc.stderr.strip()}")
    return Helm(proc.stdout.strip(), home)


def load_crd() -> dict | None:
    path = CRD_DIR / "mqttbrokers.mqtt.wharf.dev.yaml"
    if not path.exists():
        return None
    return yaml.safe_load(path.read_text())


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (pip install: see the test extra in pyproject.toml)")
    return path


def crd_schema(crd: dict, version: str = "v1alpha1") -> dict:
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def custom_resource_errors(crd: dict, obj: dict) -> list[str]:
    """Validate a custom resource against the CRD's openAPIV3Schema, as far as JSON Schema goes.

    An approximation of the API server: no defaulting, no pruning, no CEL rules (x-kubernetes-* is ignored).
    Returns one "path: message" line per error; empty when valid.
    """
    import jsonschema

    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    api_group, _, version = obj.get("apiVersion", "").partition("/")
    if api_group != group or obj.get("kind") != kind:
        return [f"not a {kind}.{group}: apiVersion={obj.get('apiVersion')!r} kind={obj.get('kind')!r}"]
    validator = jsonschema.Draft7Validator(crd_schema(crd, version))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def kubernetes_errors(obj: dict, kube_version: str) -> list[str]:
    """Validate a built-in object offline against the Kubernetes schema of one version (strict: no unknown fields)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {error.message}"]
    return []
