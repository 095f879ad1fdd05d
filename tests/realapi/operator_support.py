"""Run the real ``wharf-operator`` entry point against the local control plane, as the chart's
ServiceAccount: the chart's RBAC objects are rendered with the pinned helm and applied, and the
operator gets a TokenRequest token for that ServiceAccount and nothing else."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kubernetes
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from realapi_support import REPO, localcluster

CHART = REPO / "charts" / "wharf"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def pinned_helm() -> str:
    ensure = REPO / "tools" / "helm" / "ensure-helm.sh"
    proc = subprocess.run([str(ensure)], capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"cannot get the pinned helm: {proc.stderr.strip()}")
    return proc.stdout.strip()


def chart_rbac(helm: str, home: Path, release: str, namespace: str, watch: list[str]) -> list[dict]:
    """The ServiceAccount and RBAC objects the chart ships for this release and scope: the operator's own (the CRD
    upgrade role and the roles for people are tested in tests/delivery/test_chart*_realapi.py)."""
    args = [helm, "template", release, str(CHART), "--namespace", namespace,
            "--set", "crds.upgrade=false", "--set", "rbac.aggregateToDefaultRoles=false"]
    for index, watched in enumerate(watch):
        args += ["--set", f"operator.watchNamespaces[{index}]={watched}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)},
                          check=False)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc and doc.get("kind") in RBAC_KINDS]


def apply_objects(api: kubernetes.client.ApiClient, objects: list[dict]) -> None:
    for obj in objects:
        kubernetes.utils.create_from_dict(api, obj)


def service_account_kubeconfig(controlplane, api, namespace: str, account: str, path: Path) -> Path:
    token = kubernetes.client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    return localcluster.write_kubeconfig(path, controlplane.server, controlplane.pki.ca_cert, token=token,
                                         user=f"{namespace}-{account}")


def install_operator_identity(controlplane, api, helm: str, helm_home: Path, workdir: Path,
                              watch: list[str], namespace_prefix: str = "wharf-system") -> tuple[Path, str, str]:
    """A fresh namespace and release with the chart's ServiceAccount and RBAC for ``watch`` (empty:
    cluster-wide); returns (a kubeconfig with that ServiceAccount's token, its namespace, its name)."""
    from realapi_support import unique_name, wait_for

    operator_namespace = unique_name(namespace_prefix)
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": operator_namespace}})
    objects = chart_rbac(helm, helm_home, unique_name("wharf"), operator_namespace, watch)
    kinds = sorted(o["kind"] for o in objects)
    expected = ["ClusterRole", "ClusterRoleBinding"] if not watch else ["Role", "RoleBinding"] * len(watch)
    # and the leader election's Role and RoleBinding (for the Lease) in the operator's namespace
    assert kinds == sorted(expected + ["Role", "RoleBinding", "ServiceAccount"]), kinds
    apply_objects(api, objects)
    account = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
    # The RBAC authorizer serves from an informer cache that follows new bindings shortly after
    # they are written (as after any `helm install`); start the operator once they are in force.
    for namespace in watch or [None]:
        wait_for(lambda namespace=namespace: service_account_may(api, operator_namespace, account, namespace,
                                                                 "create", "statefulsets", "apps"),
                 f"the chart's RBAC for {account} to be in force", timeout=30)
    kubeconfig = service_account_kubeconfig(controlplane, api, operator_namespace, account,
                                            workdir / "operator.kubeconfig")
    return kubeconfig, operator_namespace, account


def service_account_may(api, account_namespace: str, account: str, namespace: str | None, verb: str,
                        resource: str, group: str = "") -> bool:
    """Ask the apiserver's authorizer (SubjectAccessReview) whether the ServiceAccount may do this."""
    review = kubernetes.client.AuthorizationV1Api(api).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{account_namespace}:{account}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{account_namespace}",
                            "system:authenticated"],
                 "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource,
                                        "group": group}}})
    return bool(review.status.allowed)


def operator_command() -> list[str]:
    """The installed console script, next to this interpreter."""
    script = Path(sys.executable).with_name("wharf-operator")
    if not script.exists():
        raise AssertionError(f"{script} is missing: install the project (pip install -e '.[operator,test]')")
    return [str(script)]


@contextmanager
def running_operator(kubeconfig: Path, log_path: Path, namespaces: list[str], pod_cidr: str,
                     extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None,
                     ) -> Iterator[subprocess.Popen]:
    """Start ``wharf-operator`` (with ``extra_args`` and ``extra_env``); wait for its liveness endpoint (a standby's
    too); stop it (SIGTERM) afterwards, unless it has ended already."""
    health_port = localcluster.free_loopback_port()
    args = [*operator_command(), "--kubeconfig", str(kubeconfig), "--verbose",
            "--liveness", f"http://127.0.0.1:{health_port}/healthz", "--metrics-bind", "127.0.0.1",
            "--metrics-port", "0",
            # The fake Pods' IPs: the operator may call only these (nothing listens there yet).
            "--allow-pod-network", pod_cidr, "--signal-timeout", "2", "--reload-wait", "5"]
    args += [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
    args += extra_args or []
    env = {**os.environ, "NO_PROXY": "*", "no_proxy": "*", **(extra_env or {})}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_healthy(proc, health_port, log_path)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 60.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"wharf-operator exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"wharf-operator not healthy after {timeout}s:\n{log_path.read_text()[-3000:]}")


def tls_secret(name: str, common_name: str) -> dict:
    """A kubernetes.io/tls Secret as cert-manager writes it: a self-signed leaf, its key, ca.crt."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": name},
            "stringData": {"tls.crt": cert_pem, "tls.key": key_pem, "ca.crt": cert_pem}}


def create_one_way_tls_inputs(core: kubernetes.client.CoreV1Api, namespace: str) -> None:
    """What manifests/examples/one-way-tls.yaml's MQTTBroker refers to: its certificate's Secret, the users Secret
    and the example's ACL ConfigMap."""
    core.create_namespaced_secret(namespace, tls_secret("wharf-tls", "wharf.test"))
    core.create_namespaced_secret(namespace, kubernetes.client.V1Secret(
        metadata=kubernetes.client.V1ObjectMeta(name="wharf-users"), string_data={"passwd": "# no users yet\n"}))
    for document in yaml.safe_load_all((REPO / "manifests" / "examples" / "one-way-tls.yaml").read_text()):
        if document and document["kind"] == "ConfigMap":
            core.create_namespaced_config_map(namespace, document)


def example_broker(example: str) -> dict:
    """An MQTTBroker from manifests/examples/."""
    for document in yaml.safe_load_all((REPO / "manifests" / "examples" / example).read_text()):
        if document and document.get("kind") == "MQTTBroker":
            return document
    raise AssertionError(f"no MQTTBroker in manifests/examples/{example}")
