"""What the operator's Secret watch carries, on the real control plane: the API server leaves Helm's release Secrets
out of it (the field selector ``type!=helm.sh/release.v1``, which it must accept: a refused selector would stop
the watch), the operator's handlers run for no Secret that no MQTTBroker references or owns, and a referenced
Secret's change still reaches the broker's status.

Printed (run with -s): the bytes a listing of the namespace's Secrets returns with and without the selector (what
the watch's initial listing and each event of such a Secret would carry), and the watch events the operator
counted as relevant or not (``wharf_operator_watch_events_total``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import urllib.request

import kubernetes
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from operator_support import install_operator_identity, running_operator, tls_secret
from realapi_support import localcluster, wait_for
from wharf_operator.handlers import SECRET_FIELD_SELECTOR

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
TIMEOUT = 60  # a safety net against hangs
HELM_RELEASE_BYTES = 256 * 1024  # a mid-sized release: the rendered chart, gzipped (incompressible), base64
UPDATES = 3
INVOKED = "secret_event' is invoked"  # kopf's debug line for each run of the operator's Secret handler


def _der_fingerprint(secret: dict) -> str:
    """What status.listeners[].fingerprint says for this Secret: SHA-256 of the leaf certificate (DER)."""
    cert = x509.load_pem_x509_certificate(secret["stringData"]["tls.crt"].encode())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _listener_fingerprint(api, namespace: str, name: str) -> str | None:
    status = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
    return next((entry.get("fingerprint") for entry in status.get("listeners") or []), None)


def _watch_events(port: int) -> dict[tuple[str, str], float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("wharf_operator_watch_events_total{"):
            labels, _, value = line.rpartition(" ")
            fields = dict(part.split("=", 1) for part in labels[labels.index("{") + 1:-1].split(","))
            counts[(fields["kind"].strip('"'), fields["relevant"].strip('"'))] = float(value)
    return counts


def _secret(name: str, type_: str, payload: bytes) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": {"name": name},
            "data": {"release": base64.b64encode(payload).decode()}}


def _listing_bytes(api, namespace: str, field_selector: str | None) -> tuple[int, list[str]]:
    """The size of a LIST of the namespace's Secrets as the API server sends it, and the names in it."""
    core = kubernetes.client.CoreV1Api(api)
    kwargs = {"field_selector": field_selector} if field_selector else {}
    raw = core.list_namespaced_secret(namespace, _preload_content=False, **kwargs)
    size = len(raw.data)
    names = [s.metadata.name for s in core.list_namespaced_secret(namespace, **kwargs).items]
    return size, names


@pytest.mark.timeout(600)
def test_helm_release_secrets_never_reach_the_operator_and_unreferenced_ones_run_no_handler(
        controlplane, api, mqttbroker_crd, helm, namespace, tmp_path):
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, [namespace])
    core = kubernetes.client.CoreV1Api(api)
    log = tmp_path / "operator.log"
    metrics_port = localcluster.free_loopback_port()
    first = tls_secret("wharf-tls", "wharf.test")
    core.create_namespaced_secret(namespace, first)
    with running_operator(kubeconfig, log, namespaces=[namespace], pod_cidr=controlplane.pod_cidr,
                          extra_args=["--resync-interval", "3600", "--recheck-interval", "3600",
                                      "--metrics-port", str(metrics_port)]):
        # No pods (replicas 0): the operator's view of the Secret shows in status alone.
        kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": "wharf"},
            "spec": {"replicas": 0, "listeners": [{"name": "mqtts", "type": "ssl", "port": 8883,
                                                   "tls": {"secretName": "wharf-tls"}}]}})
        wait_for(lambda: _listener_fingerprint(api, namespace, "wharf") == _der_fingerprint(first),
                 "status with the first certificate", timeout=TIMEOUT)
        before = _watch_events(metrics_port)
        invoked_before = log.read_text().count(INVOKED)

        # A Helm release Secret (created and updated) and then an unreferenced Opaque one, in the watched namespace.
        core.create_namespaced_secret(namespace, _secret("sh.helm.release.v1.app.v1", "helm.sh/release.v1",
                                                         os.urandom(HELM_RELEASE_BYTES)))
        for _ in range(UPDATES):
            core.patch_namespaced_secret("sh.helm.release.v1.app.v1", namespace,
                                         {"data": {"release": base64.b64encode(
                                             os.urandom(HELM_RELEASE_BYTES)).decode()}})
        core.create_namespaced_secret(namespace, _secret("app-db-password", "Opaque", b"hunter2"))
        for index in range(UPDATES):
            core.patch_namespaced_secret("app-db-password", namespace, {"metadata": {"labels": {"n": str(index)}}})
        # One watch stream, in resourceVersion order: once the Opaque Secret's events are counted, the Helm
        # Secret's (written before) would have been too.
        wait_for(lambda: _watch_events(metrics_port).get(("Secret", "false"), 0)
                 >= before.get(("Secret", "false"), 0) + 1 + UPDATES,
                 "the unreferenced Secret's events counted", timeout=TIMEOUT)

        # The referenced Secret still reaches the operator through the filtered watch.
        second = tls_secret("wharf-tls", "wharf.test")
        core.replace_namespaced_secret("wharf-tls", namespace, second)
        started = time.monotonic()
        wait_for(lambda: _listener_fingerprint(api, namespace, "wharf") == _der_fingerprint(second),
                 "status with the second certificate", timeout=TIMEOUT)
        seconds = time.monotonic() - started
        after = _watch_events(metrics_port)
        invoked = log.read_text().count(INVOKED) - invoked_before

    irrelevant = after.get(("Secret", "false"), 0) - before.get(("Secret", "false"), 0)
    relevant = after.get(("Secret", "true"), 0) - before.get(("Secret", "true"), 0)
    # Only the Opaque Secret's 1 + UPDATES events were irrelevant: none of the Helm Secret's arrived.
    assert irrelevant == 1 + UPDATES, (before, after)
    assert relevant >= 1, (before, after)  # the referenced Secret's replacement
    # The handler ran for the relevant events alone (kopf logs each invocation): not for the unreferenced Secret.
    assert invoked == relevant, (invoked, before, after)
    assert "forbidden" not in log.read_text().lower()

    with_selector, names_with = _listing_bytes(api, namespace, SECRET_FIELD_SELECTOR)
    without, names_without = _listing_bytes(api, namespace, None)
    assert "sh.helm.release.v1.app.v1" in names_without and "sh.helm.release.v1.app.v1" not in names_with
    assert {"wharf-tls", "wharf-admin-token", "app-db-password"} <= set(names_with)
    print(f"\n  Secrets listing of the namespace: {without} bytes without the selector, {with_selector} with it "
          f"(one Helm release Secret of {HELM_RELEASE_BYTES // 1024} KiB); watch events counted: "
          f"{irrelevant:.0f} irrelevant, {relevant:.0f} relevant; a referenced Secret's change in status after "
          f"{seconds:.2f} s", end="")
