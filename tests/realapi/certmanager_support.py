"""The real cert-manager controller for the real-API tests.

``make cert-manager`` (tools/controlplane/build-cert-manager.sh) builds the pinned release's
``cmd/controller`` and its CRDs into ~/.cache/wharf/cert-manager/<pin-hash>/. Here the CRDs are
installed into the test control plane and the controller runs as a local process against it:

- ``--kubeconfig`` (the control plane's admin identity) and ``--leader-elect=false``: one instance,
  no Lease to wait for;
- only the controllers that the self-signed and CA issuers need (``CONTROLLERS``): no ACME (orders,
  challenges, their solvers and DNS self-checks), no Vault or Venafi, no ingress or gateway shims, so
  nothing in it has a reason to reach anything but the apiserver; no webhook is involved (the CRDs
  are applied without one, which the controller does not need);
- its metrics server on 127.0.0.1 on a free port, the profiler off, no ambient credentials, no
  proxy variables, a private HOME; it gets SIGTERM when the test process dies, and is stopped
  (SIGTERM, then SIGKILL after a grace period) when its context ends.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kubernetes
import yaml
from kubernetes.client import ApiException
from realapi_support import REPO, localcluster, wait_for

BUILD_SCRIPT = REPO / "tools" / "controlplane" / "build-cert-manager.sh"
GROUP, VERSION = "cert-manager.io", "v1"
CONTROLLERS = ("issuers", "clusterissuers", "certificaterequests-approver", "certificaterequests-issuer-ca",
               "certificaterequests-issuer-selfsigned", "certificates-trigger", "certificates-issuing",
               "certificates-key-manager", "certificates-request-manager", "certificates-readiness",
               "certificates-revision-manager")


class CertManagerUnavailable(RuntimeError):
    """The controller is not built and cannot be here."""


def locate(build: bool = False) -> Path:
    """The build directory (``bin/controller``, ``crds/``), building it first if asked."""
    command = [str(BUILD_SCRIPT)] if build else [str(BUILD_SCRIPT), "--check"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=None if build else subprocess.DEVNULL,
                            text=True, check=False)
    if result.returncode != 0:
        if build:
            raise CertManagerUnavailable(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
        raise CertManagerUnavailable(f"cert-manager not built yet: run {BUILD_SCRIPT} (or `make cert-manager`)")
    root = Path(result.stdout.strip().splitlines()[-1]).parent
    if not (root / "bin" / "controller").is_file() or not list((root / "crds").glob("*.yaml")):
        raise CertManagerUnavailable(f"{root} lacks bin/controller or crds/*.yaml")
    return root


def pinned_version(root: Path) -> str:
    """CERT_MANAGER_VERSION from the pin the build was made from (copied next to bin/)."""
    for line in (root / "versions.env").read_text().splitlines():
        if line.startswith("CERT_MANAGER_VERSION="):
            return line.split("=", 1)[1].strip()
    raise CertManagerUnavailable(f"{root}/versions.env has no CERT_MANAGER_VERSION")


def install_crds(api: kubernetes.client.ApiClient, crd_dir: Path) -> list[str]:
    """Create the release's CRDs (an existing one is left as it is); wait until each is Established."""
    extensions = kubernetes.client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            names.append(document["metadata"]["name"])
            try:
                extensions.create_custom_resource_definition(document)
            except ApiException as error:
                if error.status != 409:
                    raise
    for name in names:
        wait_for(lambda name=name: any(c.type == "Established" and c.status == "True" for c in
                                       extensions.read_custom_resource_definition(name).status.conditions or []),
                 f"CRD {name} Established", timeout=60)
    return names


@contextmanager
def running_controller(root: Path, kubeconfig: Path, workdir: Path, grace: float = 15.0
                       ) -> Iterator[subprocess.Popen]:
    """Run the controller until the context ends; the log is ``workdir/cert-manager.log``."""
    home = workdir / "cert-manager-home"
    home.mkdir(parents=True, exist_ok=True)
    metrics_port = localcluster.free_loopback_port()
    args = [str(root / "bin" / "controller"), f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}", f"--metrics-listen-address=127.0.0.1:{metrics_port}",
            "--cluster-resource-namespace=kube-system", "--issuer-ambient-credentials=false",
            "--cluster-issuer-ambient-credentials=false", "--enable-profiling=false", "--v=2"]
    log_path = workdir / "cert-manager.log"
    env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "TZ") if key in os.environ}
    env.update(HOME=str(home), NO_PROXY="*", no_proxy="*")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=home, preexec_fn=localcluster._die_with_parent)
    try:
        _wait_serving(proc, metrics_port, log_path)
        pinned = pinned_version(root)
        assert f'"version"="v{pinned}"' in log_path.read_text(errors="replace"), \
            f"cert-manager does not report the pinned v{pinned}:\n{log_path.read_text()[-2000:]}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_serving(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 60.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"cert-manager exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"cert-manager not serving metrics after {timeout}s:\n{log_path.read_text()[-3000:]}")


def certificate_ready(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str) -> dict | None:
    """The Certificate's status when its Ready condition is True, else None."""
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "certificates", name).get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status if ready else None
