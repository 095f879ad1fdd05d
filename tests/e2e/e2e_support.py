"""Helpers of the kind end-to-end suite: prerequisites, kubectl, port-forwards, TLS probes, waiting.

Everything here talks to the cluster only through the `kind`, `kubectl`, `docker` and pinned `helm` binaries,
and to brokers only through `kubectl port-forward` on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
import tests.support as support

ROOT = Path(__file__).resolve().parents[2]

# The e2e workflow pins these; locally they can be set the same way.
DEFAULT_NODE_IMAGE = "kindest/node:v1.32.2"
DEFAULT_CERT_MANAGER_VERSION = "v1.17.2"


def node_image() -> str:
    return os.environ.get("WHARF_E2E_NODE_IMAGE", DEFAULT_NODE_IMAGE)


def cert_manager_manifest_url() -> str:
    version = os.environ.get("CERT_MANAGER_VERSION", DEFAULT_CERT_MANAGER_VERSION)
    return f"https://github.com/cert-manager/cert-manager/releases/download/{version}/cert-manager.yaml"


def missing_prerequisite(which: Callable[[str], str | None] = shutil.which,
                         run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                         env: dict[str, str] | None = None) -> str | None:
    """Why the kind suite cannot run here, or None when it can."""
    env = os.environ if env is None else env
    for binary in ("docker", "kind", "kubectl"):
        if which(binary) is None:
            return f"{binary} is not installed (the kind suite needs docker, kind and kubectl)"
    if run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker daemon answers `docker info`"
    image = env.get("WHARF_E2E_NODE_IMAGE", DEFAULT_NODE_IMAGE)
    if env.get("WHARF_E2E_ALLOW_PULL") != "1" and \
            run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        return (f"kind node image {image} is not available locally "
                "(set WHARF_E2E_ALLOW_PULL=1 where it can be pulled)")
    return None


# The cluster converges in its own time: a probe that fails meanwhile (kubectl, a port-forward) means "not yet".
wait_until = partial(support.wait_until, interval=1.0, ignore=(Exception,))


def condition(obj: dict, kind: str) -> dict | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == kind:
            return cond
    return None


def restart_counts(pod_list: dict) -> dict[str, int]:
    """Container restarts per pod name, from `kubectl get pods -o json`."""
    return {pod["metadata"]["name"]: sum(c.get("restartCount", 0)
                                         for c in pod.get("status", {}).get("containerStatuses", []))
            for pod in pod_list.get("items", [])}


def pod_uids(pod_list: dict) -> dict[str, str]:
    return {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in pod_list.get("items", [])}


def renewal_status_patch(now: datetime | None = None) -> list[dict]:
    """A JSON patch for a Certificate's status that makes cert-manager reissue it now: it appends the
    Issuing=True condition that `cmctl renew` sets, keeping the other conditions."""
    now = now or datetime.now(timezone.utc)
    return [{"op": "add", "path": "/status/conditions/-", "value": {
        "type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
        "message": "Certificate re-issuance manually triggered by the Wharf e2e suite",
        "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }}]


FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$")


def parse_forwarding_line(line: str) -> int | None:
    """The local port from kubectl port-forward's "Forwarding from 127.0.0.1:PORT -> REMOTE" line."""
    match = FORWARDING.match(line.strip())
    return int(match.group(1)) if match else None


def fingerprint(der: bytes) -> str:
    """Lowercase hex SHA-256 of a certificate's DER (the operator's and the broker's fingerprint format)."""
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: str) -> str:
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem))


def tls_context(ca_pem: str, client_cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem)
    if client_cert:
        context.load_cert_chain(*client_cert)
    return context


def served_fingerprint(port: int, context: ssl.SSLContext, server_hostname: str) -> str:
    """Handshake with 127.0.0.1:port, verifying the chain and host name; the leaf's fingerprint."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return fingerprint(der)


class Kubectl:
    """kubectl against one kubeconfig; JSON in and out."""

    def __init__(self, kubeconfig: Path, binary: str = "kubectl") -> None:
        self.kubeconfig = kubeconfig
        self.binary = binary

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--kubeconfig", str(self.kubeconfig), *args]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def apply(self, *objects: dict) -> None:
        self.run("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))

    def get(self, *args: str) -> dict:
        return json.loads(self.run("get", *args, "-o", "json").stdout)

    def port_forward(self, namespace: str, target: str, remote_port: int) -> "PortForward":
        return PortForward(self.argv("-n", namespace, "port-forward", target, f":{remote_port}",
                                     "--address", "127.0.0.1"))


class PortForward:
    """`kubectl port-forward` to an ephemeral 127.0.0.1 port, for the life of a with-block."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> "PortForward":
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            port = parse_forwarding_line(line)
            if port:
                self.port = port
                return self
        self.__exit__(None, None, None)
        raise RuntimeError(f"kubectl port-forward did not start: {' '.join(self.argv)}")

    def __exit__(self, *_exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- the objects the suite applies (unit-tested against the CRD offline) -----------------------------------

def issuer(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def certificate(name: str, namespace: str, issuer_name: str, **spec: object) -> dict:
    """A cert-manager Certificate whose Secret has the same name; a new key on every issuance."""
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"secretName": name, "issuerRef": {"kind": "Issuer", "name": issuer_name},
                     "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}, **spec}}


def mqtt_broker(name: str, namespace: str, *, image: str, port: int, server_secret: str, ca_secret: str,
                replicas: int = 2) -> dict:
    """An MQTTBroker with one ssl listener: server certificate from server_secret, client certificates
    verified against ca_secret's ca.crt when presented (one-way and mutual TLS on the same port)."""
    return {"apiVersion": "mqtt.wharf.dev/v1alpha1", "kind": "MQTTBroker",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "image": image, "imagePullPolicy": "Never",
                     # The clients here are anonymous and use any topic: these tests are about TLS.
                     "authentication": {"allowAnonymous": True}, "authorization": {"noMatch": "allow"},
                     "listeners": [{"name": "default", "type": "ssl", "port": port, "tls": {
                         "secretName": server_secret,
                         "caRef": {"kind": "Secret", "name": ca_secret, "key": "ca.crt"},
                         "verify": "verify_peer", "failIfNoPeerCert": False}}]}}
