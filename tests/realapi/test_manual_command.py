"""`scripts/controlplane up|env|status|down`: the same control plane for manual use, and a
`down` that leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess

import kubernetes
from realapi_support import REPO, admin_client, localcluster

COMMAND = REPO / "scripts" / "controlplane"


def _run(state_dir, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WHARF_CONTROLPLANE_DIR": str(state_dir)}
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True, env=env, timeout=180, check=False)


def test_up_env_status_down(controlplane_binaries, tmp_path):
    state_dir = tmp_path / "manual"
    up = _run(state_dir, "up")
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = up.stdout.strip()
        assert kubeconfig == str(state_dir / "admin.kubeconfig")
        assert _run(state_dir, "env").stdout.strip() == f"export KUBECONFIG={kubeconfig}"
        # A second `up` finds the running one instead of starting another.
        assert _run(state_dir, "up").stdout.strip() == kubeconfig

        state = json.loads((state_dir / "state.json").read_text())
        assert state["server"].startswith("https://127.0.0.1:")
        with admin_client(kubeconfig) as client:
            pinned = localcluster.pinned_versions()["KUBERNETES_VERSION"]
            assert kubernetes.client.VersionApi(client).get_code().git_version == f"v{pinned}"
            node = kubernetes.client.CoreV1Api(client).read_node(localcluster.NODE_NAME)
            assert node.spec.pod_cidr == state["pod_cidr"]
        status = _run(state_dir, "status")
        assert status.returncode == 0 and status.stdout.count(" running ") == len(localcluster.BINARIES)
    finally:
        down = _run(state_dir, "down")
    assert down.returncode == 0, down.stderr
    assert not state_dir.exists()
    for process in state["processes"]:
        assert not localcluster.ComponentProcess(**process).alive(), process["name"]
    assert _run(state_dir, "env").returncode == 1
