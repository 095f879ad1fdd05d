"""End to end, without kind: a broker Pod the real operator runs serves its metrics on the container port
``metrics`` without any token, and nothing else there. The harness plays the kubelet and runs a real
``wharf-broker`` on the Pod's (loopback) address with the config the operator rendered; the scrape goes to the
port the StatefulSet and the headless Service name, as a PodMonitor's would."""

from __future__ import annotations

import urllib.error
import urllib.request

import kubernetes
import pytest
from kubelet_harness import KubeletHarness
from operator_support import install_operator_identity, running_operator
from realapi_support import is_test_pod_ip, wait_for

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
BROKER = "scraped"
POD = f"{BROKER}-0"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(url: str, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.timeout(300)
def test_a_broker_pod_serves_metrics_without_a_token(controlplane, api, mqttbroker_crd, helm, namespace, tmp_path):
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    binary, home = helm
    kubeconfig, _, _ = install_operator_identity(controlplane, api, binary, home, tmp_path, watch=[namespace])
    with running_operator(kubeconfig, tmp_path / "operator.log", namespaces=[namespace],
                          pod_cidr=controlplane.pod_cidr), \
            KubeletHarness(api, namespace, f"app.kubernetes.io/instance={BROKER}", tmp_path / "pods") as kubelet:
        kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": BROKER},
            "spec": {"replicas": 1, "image": "wharf:e2e",
                     "listeners": [{"name": "mqtt", "type": "tcp", "port": 1883}]}})
        runtime = wait_for(lambda: kubelet.running().get(POD), f"a broker process for {POD}", timeout=120)
        assert is_test_pod_ip(runtime.ip), runtime.ip

        # The port a scraper finds: the container port and the headless Service's port named "metrics".
        container = apps.read_namespaced_stateful_set(BROKER, namespace).spec.template.spec.containers[0]
        (port,) = [p.container_port for p in container.ports if p.name == "metrics"]
        headless = core.read_namespaced_service(f"{BROKER}-headless", namespace)
        assert [(p.port, p.target_port) for p in headless.spec.ports if p.name == "metrics"] == [(port, "metrics")]
        assert "metrics" not in {p.name for p in core.read_namespaced_service(BROKER, namespace).spec.ports}

        url = f"http://{runtime.ip}:{port}"

        def scraped():
            try:
                status, body = _request(f"{url}/metrics")
            except OSError:
                return None  # the broker is still starting
            return body if status == 200 else None
        body = wait_for(scraped, f"GET {url}/metrics", timeout=90, interval=0.5).decode()
        assert 'wharf_listener_connections_accepted_total' in body and "wharf_connections" in body

        # Nothing but that: the admin API is not behind this port, and nothing can be changed through it.
        assert _request(f"{url}/api/v5/listeners")[0] == 404
        assert _request(f"{url}/api/v5/listeners/tcp:mqtt", "PUT", b'{"ssl_options": {}}',
                        {"Content-Type": "application/json"})[0] == 404
        assert _request(f"{url}/metrics", "POST", b"{}", {"Content-Type": "application/json"})[0] == 405
        # The admin port's /metrics still wants the admin token.
        assert _request(f"http://{runtime.ip}:18083/metrics")[0] == 401
        assert not kubelet.errors, kubelet.errors
