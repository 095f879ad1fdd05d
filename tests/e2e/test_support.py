"""Unit tests of the kind suite's own helpers (these run everywhere, cluster or not)."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import sys
import threading
from datetime import datetime, timezone

import pytest
from e2e_support import (ROOT, PortForward, condition, missing_prerequisite, parse_forwarding_line,
                         pem_fingerprint, pod_uids, renewal_status_patch, restart_counts, served_fingerprint,
                         tls_context, wait_until)

CERTS = ROOT / "etc" / "certs"


def ok(_argv, **_kwargs) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(_argv, 0)


def failing(*failing_argv: str):
    def run(argv, **_kwargs) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 1 if " ".join(argv).startswith(failing_argv) else 0)
    return run


def test_skip_reason_names_the_missing_binary() -> None:
    reason = missing_prerequisite(which=lambda b: None if b == "kind" else f"/usr/bin/{b}", run=ok, env={})
    assert reason is not None and reason.startswith("kind is not installed")


def test_skip_reason_when_the_daemon_is_down() -> None:
    reason = missing_prerequisite(which=lambda b: b, run=failing("docker info"), env={})
    assert reason == "no Docker daemon answers `docker info`"


def test_skip_reason_when_no_node_image_is_available() -> None:
    env = {"WHARF_E2E_NODE_IMAGE": "kindest/node:v1.32.2"}
    reason = missing_prerequisite(which=lambda b: b, run=failing("docker image inspect"), env=env)
    assert reason is not None and "kindest/node:v1.32.2 is not available" in reason
    # Where pulling is allowed (CI), a missing local image is fine.
    allowed = {**env, "WHARF_E2E_ALLOW_PULL": "1"}
    assert missing_prerequisite(which=lambda b: b, run=failing("docker image inspect"), env=allowed) is None


def test_wait_until_returns_the_first_truthy_result() -> None:
    results = iter([None, RuntimeError("not yet"), 0, "ready"])
    def probe():
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value
    assert wait_until(probe, timeout=10, sleep=lambda _s: None) == "ready"


def test_wait_until_times_out_naming_the_last_result() -> None:
    now = [0.0]
    def clock() -> float:
        return now[0]
    def sleep(seconds: float) -> None:
        now[0] += seconds
    with pytest.raises(TimeoutError, match="pods ready not reached within 5s; last: '1/2'"):
        wait_until(lambda: ProbeValue("1/2"), timeout=5, what="pods ready", clock=clock, sleep=sleep)
    assert now[0] == 5.0


class ProbeValue(str):
    """A falsy string that still shows its text (like "1/2 ready" from a probe that is not done yet)."""

    def __bool__(self) -> bool:
        return False


def test_condition_and_pod_bookkeeping() -> None:
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                     {"type": "CertificatesReady", "status": "False", "message": "key mismatch"}]}}
    assert condition(obj, "CertificatesReady")["message"] == "key mismatch"
    assert condition(obj, "Paused") is None and condition({}, "Ready") is None
    pods = {"items": [
        {"metadata": {"name": "a", "uid": "1"}, "status": {"containerStatuses": [{"restartCount": 2},
                                                                                 {"restartCount": 1}]}},
        {"metadata": {"name": "b", "uid": "2"}, "status": {}}]}
    assert restart_counts(pods) == {"a": 3, "b": 0}
    assert pod_uids(pods) == {"a": "1", "b": "2"}


def test_renewal_patch_is_what_cert_manager_acts_on() -> None:
    patch = renewal_status_patch(datetime(2026, 11, 26, 22, 0, 5, tzinfo=timezone.utc))
    (operation,) = patch
    assert operation["op"] == "add" and operation["path"] == "/status/conditions/-"  # keeps Ready
    issuing = operation["value"]
    assert issuing["type"] == "Issuing" and issuing["status"] == "True"
    assert issuing["reason"] == "ManuallyTriggered"
    assert issuing["lastTransitionTime"] == "2026-11-26T22:00:05Z"


@pytest.mark.parametrize("line, port", [
    ("Forwarding from 127.0.0.1:41234 -> 8883\n", 41234),
    ("Forwarding from [::1]:41234 -> 8883", None),
    ("Handling connection for 41234", None),
])
def test_parse_forwarding_line(line: str, port: int | None) -> None:
    assert parse_forwarding_line(line) == port


def test_port_forward_reads_the_port_and_stops_the_process() -> None:
    """A stand-in process prints what kubectl prints; the context manager finds the port and terminates it."""
    script = "import sys,time; print('Forwarding from 127.0.0.1:40001 -> 8883', flush=True); time.sleep(60)"
    forward = PortForward([sys.executable, "-c", script])
    with forward:
        assert forward.port == 40001
        assert forward.process.poll() is None
    assert forward.process.poll() is not None


def test_port_forward_that_never_forwards_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        with PortForward([sys.executable, "-c", "print('error: no such service')"]):
            pass


def test_served_fingerprint_over_a_real_handshake() -> None:
    """Against a loopback TLS server with the test certificates: the chain and name are verified."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(CERTS / "server.crt", CERTS / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        ca = (CERTS / "rootCA.crt").read_text()
        expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert((CERTS / "server.crt").read_text())).hexdigest()
        assert served_fingerprint(port, tls_context(ca), "localhost") == expected
        assert pem_fingerprint((CERTS / "server.crt").read_text()) == expected
        with pytest.raises(ssl.SSLCertVerificationError):
            served_fingerprint(port, tls_context(ca), "not-the-server.example")
    finally:
        thread.join(timeout=10)
        listener.close()


def test_the_suites_mqtt_broker_is_valid_for_the_crd() -> None:
    """What the suite applies passes the CRD's schema (offline: JSON Schema part; CEL is covered elsewhere)."""
    import jsonschema
    import yaml
    from e2e_support import mqtt_broker

    crd = yaml.safe_load((ROOT / "manifests" / "crds" / "mqttbrokers.mqtt.wharf.dev.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    broker = mqtt_broker("mqtt", "e2e", image="wharf:e2e", port=8883, server_secret="srv", ca_secret="ca")
    assert broker["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    assert broker["kind"] == crd["spec"]["names"]["kind"]
    errors = [e.message for e in jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"]).iter_errors(broker)]
    assert errors == []
    tls = broker["spec"]["listeners"][0]["tls"]
    # The CEL rules the CRD carries for this combination: failIfNoPeerCert needs verify_peer; verify_peer needs caRef.
    assert tls["verify"] == "verify_peer" and tls["caRef"]["name"] == "ca" and tls["failIfNoPeerCert"] is False


def test_certificates_rotate_their_keys() -> None:
    from e2e_support import certificate, issuer

    cert = certificate("srv", "e2e", "ca", dnsNames=["mqtt"])
    assert cert["spec"]["secretName"] == "srv"
    assert cert["spec"]["privateKey"]["rotationPolicy"] == "Always"  # a renewal must change the fingerprint
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "ca"}
    assert issuer("ca", "e2e", {"ca": {"secretName": "ca"}})["spec"] == {"ca": {"secretName": "ca"}}
