"""The GitHub workflows: valid against the workflow schema (offline), versions pinned, the suites wired in."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from delivery_support import ROOT, tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def test_there_are_a_test_and_a_kind_workflow() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yaml", "e2e.yaml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_schema(path) -> None:
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_catches_a_typo(tmp_path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / ".github" / "workflows" / "ci.yaml").read_text().replace("runs-on:", "runs_on:"))
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned(path) -> None:
    for uses in re.findall(r"uses:\s*(\S+)", path.read_text()):
        assert re.search(r"@v\d+|@[0-9a-f]{40}$", uses), f"{path.name}: {uses} is not pinned"


def test_kind_and_cert_manager_versions_are_pinned() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e.yaml").read_text())
    env = workflow["env"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["KIND_VERSION"])
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["CERT_MANAGER_VERSION"])
    assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", env["WHARF_E2E_NODE_IMAGE"])
    steps = " ".join(str(step.get("run", "")) for step in workflow["jobs"]["kind"]["steps"])
    assert 'go install "sigs.k8s.io/kind@${KIND_VERSION}"' in steps
    assert "pytest tests/e2e -m e2e" in steps


def test_ci_runs_the_suite_and_the_image_test() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yaml").read_text())
    steps = {job: " ".join(str(s.get("run", "")) for s in spec["steps"]) for job, spec in workflow["jobs"].items()}
    assert 'pytest -m "not slow and not e2e and not realapi"' in steps["tests"]
    assert "tests/delivery/test_image.py -m slow" in steps["image"]
