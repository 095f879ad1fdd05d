"""``wharf-operator`` as a real process, given a kubeconfig, scoped to one namespace, against kmock's API."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import kmock as kmock_lib
import pytest
import yaml
from kmock_support import (
    VersioningEmulator,
    declare_resources,
    parse_path_with_namespaces,
)
from operator_pki import make_ca, make_leaf, tls_secret
from wharf_operator import __version__
from wharf_operator.cli import parse_args
from wharf_operator.kube import SECRETS, KubeApi, Resource

from tests.support import eventually

# The operator process and its metrics endpoint come up in their own time; a refused connection means "not yet".
_POLL = {"timeout": 30.0, "interval": 0.1, "ignore": (OSError,)}

NS = "wharf-cli"
TOKEN = "kubeconfig-token"
pytestmark = pytest.mark.kmock(cls=VersioningEmulator)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()





def test_allowed_pod_networks_come_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv("WHARF_OPERATOR_ALLOW_POD_NETWORKS", "127.0.0.0/8, ::1/128")
    assert parse_args([]).allow_pod_network == ["127.0.0.0/8", "::1/128"]
    assert parse_args(["--allow-pod-network", "127.0.0.2/32"]).allow_pod_network == ["127.0.0.2/32"]
    monkeypatch.delenv("WHARF_OPERATOR_ALLOW_POD_NETWORKS")
    assert parse_args([]).allow_pod_network == []  # any, in production


def test_broker_image_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("WHARF_BROKER_IMAGE", raising=False)
    assert parse_args([]).broker_image == f"wharf:{__version__}"
    monkeypatch.setenv("WHARF_BROKER_IMAGE", "registry.test/wharf:2.0.0")
    assert parse_args([]).broker_image == "registry.test/wharf:2.0.0"
    assert parse_args(["--broker-image", "registry.test/wharf:3.0.0"]).broker_image == "registry.test/wharf:3.0.0"


def test_defaults_watch_every_namespace(monkeypatch):
    monkeypatch.delenv("WHARF_OPERATOR_ALLOW_POD_NETWORKS", raising=False)
    args = parse_args([])
    assert args.namespace == [] and args.kubeconfig is None
    assert args.recheck_interval == 60.0 and args.metrics_port == 9090
    scoped = parse_args(["-n", "a", "--namespace", "b", "--allow-pod-network", "127.0.0.0/8"])
    assert scoped.namespace == ["a", "b"] and scoped.allow_pod_network == ["127.0.0.0/8"]


def test_network_policy_options(monkeypatch):
    """On unless turned off; the operator's own namespace from the flag, $POD_NAMESPACE or the pod's own; its labels
    from the flags."""
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr("wharf_operator.cli.SERVICE_ACCOUNT_NAMESPACE", "/nonexistent/namespace")
    args = parse_args([])
    assert args.network_policy is True and args.operator_namespace is None and args.operator_pod_labels == {}
    assert parse_args(["--no-network-policy"]).network_policy is False
    monkeypatch.setenv("POD_NAMESPACE", "wharf-system")
    args = parse_args(["--operator-pod-label", "app.kubernetes.io/name=wharf",
                       "--operator-pod-label=app.kubernetes.io/component=operator"])
    assert args.operator_namespace == "wharf-system"
    assert args.operator_pod_labels == {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/component": "operator"}
    assert parse_args(["--operator-namespace", "ops"]).operator_namespace == "ops"
    with pytest.raises(SystemExit):
        parse_args(["--operator-pod-label", "no-value"])


def test_leader_election_options(monkeypatch):
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("POD_NAME", raising=False)
    assert parse_args([]).leader_elect is False  # one replica unless asked
    monkeypatch.setattr("wharf_operator.cli.SERVICE_ACCOUNT_NAMESPACE", "/nonexistent/namespace")
    with pytest.raises(SystemExit):  # outside a pod, the Lease's namespace must be given
        parse_args(["--leader-elect"])
    monkeypatch.setenv("POD_NAMESPACE", "wharf-system")
    monkeypatch.setenv("POD_NAME", "wharf-6d9f-abcde")
    args = parse_args(["--leader-elect"])
    assert args.leader_election_namespace == "wharf-system" and args.leader_election_id == "wharf-operator"
    # controller-runtime's form: the pod's name and a unique suffix, different for every start
    assert args.leader_election_identity.startswith("wharf-6d9f-abcde_")
    assert parse_args(["--leader-elect"]).leader_election_identity != args.leader_election_identity
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (15.0, 10.0, 2.0)
    with pytest.raises(SystemExit):  # a leader must stop before its Lease can expire for the others
        parse_args(["--leader-elect", "--renew-deadline", "20"])


async def test_entry_point_runs_against_a_kubeconfig(kmock, tmp_path, monkeypatch):
    from kmock._internal import parsing

    monkeypatch.setattr(parsing, "parse_path", parse_path_with_namespaces(parsing.parse_path))
    declare_resources(kmock)
    kmock.objects["v1/namespaces", None, NS] = {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": NS, "uid": "uid-ns", "resourceVersion": "1"}}
    server = str(kmock.url).rstrip("/")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "operator", "user": {"token": TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "operator", "namespace": NS}}],
    }))
    liveness, metrics = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
    process = subprocess.Popen(
        [sys.executable, "-m", "wharf_operator", "--kubeconfig", str(kubeconfig), "--namespace", NS,
         "--liveness", f"http://127.0.0.1:{liveness}/healthz", "--metrics-bind", "127.0.0.1",
         "--metrics-port", str(metrics), "--allow-pod-network", "127.0.0.0/8"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = KubeApi(server)
    try:
        await eventually(lambda: len(kmock[kmock_lib.action.WATCH]) >= 8, "the operator's watches", **_POLL)
        watched = {str(request.url.path) for request in kmock[kmock_lib.action.WATCH]}
        # Scoped to its namespace: MQTTBrokers and the kinds of what they load or own, there only (kopf may watch
        # namespaces too).
        assert watched - {"/api/v1/namespaces"} == {f"/api/v1/namespaces/{NS}/secrets",
                           f"/api/v1/namespaces/{NS}/configmaps", f"/apis/apps/v1/namespaces/{NS}/statefulsets",
                           f"/api/v1/namespaces/{NS}/services", f"/api/v1/namespaces/{NS}/serviceaccounts",
                           f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets",
                           f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
                           f"/apis/mqtt.wharf.dev/v1alpha1/namespaces/{NS}/mqttbrokers"}

        ca = make_ca()
        await client.create(SECRETS, NS, tls_secret("broker-tls", NS, make_leaf(ca), ca))
        await client.create(Resource("mqtt.wharf.dev", "v1alpha1", "mqttbrokers"), NS, {
            "apiVersion": "mqtt.wharf.dev/v1alpha1", "kind": "MQTTBroker",
            "metadata": {"name": "cli", "namespace": NS, "uid": "uid-cli", "resourceVersion": "1"},
            "spec": {"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883,
                                    "tls": {"secretName": "broker-tls"}}]}})
        sts = await eventually(lambda: client.get(Resource("apps", "v1", "statefulsets"), NS, "cli"),
                               "the StatefulSet", **_POLL)
        assert sts["spec"]["template"]["spec"]["volumes"][2]["secret"]["secretName"] == "broker-tls"

        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{liveness}/healthz")
        assert status == 200
        text = await eventually(lambda: asyncio.to_thread(_get, f"http://127.0.0.1:{metrics}/metrics"), "metrics",
                                **_POLL)
        await eventually(lambda: 'wharf_operator_reconciles_total{result="success"}' in
                         _get(f"http://127.0.0.1:{metrics}/metrics")[1], "a counted reconciliation", **_POLL)
        assert "# TYPE wharf_operator_rotations_total counter" in text[1]

        # Both kopf and the handlers' own client used the kubeconfig's credentials.
        agents = {(r.headers.get("User-Agent", "").split("/")[0], r.headers.get("Authorization"))
                  for r in list(kmock) if r.resource is not None}
        assert ("kopf", f"Bearer {TOKEN}") in agents
        assert any(agent != "kopf" and auth == f"Bearer {TOKEN}" for agent, auth in agents)
    finally:
        await client.close()
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = await asyncio.to_thread(process.communicate, timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        print(output.decode()[-5000:])  # shown when the test fails
    assert process.returncode == 0, output.decode()[-3000:]


def test_secret_data_is_base64_as_the_api_returns_it():
    secret = tls_secret("x", NS, make_leaf(make_ca()))
    assert base64.b64decode(secret["data"]["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")
