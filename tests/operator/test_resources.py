"""The objects an MQTTBroker owns, built from its spec; and the credentials the operator runs with."""

from __future__ import annotations

import base64

import yaml
from operator_pki import make_ca, make_leaf
from wharf_operator import credentials, render, resources
from wharf_operator.crd import defaulted_spec

SPEC = defaulted_spec({
    "replicas": 3,
    "listeners": [
        {"name": "mqtts", "type": "ssl", "port": 8883, "tls": {
            "secretName": "srv", "caRef": {"name": "bundle", "kind": "ConfigMap", "key": "roots.pem"},
            "verify": "verify_peer", "keyPasswordSecretRef": {"name": "keypass"}}},
        {"name": "wss", "type": "wss", "port": 8084, "tls": {
            "secretName": "srv",
            "trustedIssuerCARef": {"name": "issuer-roots", "kind": "ConfigMap", "key": "roots.pem"}}},
    ],
    "pskAuthentication": {"enabled": True, "secretRef": {"name": "psk"}},
    "certificate": {"issuerRef": {"name": "ca-issuer"}, "secretName": "srv", "dnsNames": ["mqtt.example.com"]},
    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    "podAnnotations": {"example.com/team": "iot"},
})


def _statefulset() -> dict:
    return resources.stateful_set("b", "ns", SPEC, render.restart_hash(render.config_tree(SPEC)))


def test_every_rendered_file_is_inside_a_whole_volume_mount():
    sts = _statefulset()
    pod = sts["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("subPath" not in m for m in mounts.values())
    tree = render.config_tree(SPEC)
    paths = [value for listener in [*tree["listeners"]["ssl"].values(), *tree["listeners"]["wss"].values()]
             for key, value in listener["ssl_options"].items() if key.endswith("file")]
    paths += [tree["dashboard"]["token_file"], tree["psk_authentication"]["init_file"]]
    for path in paths:
        directory = path.rsplit("/", 1)[0]
        assert directory in mounts, path
        assert mounts[directory]["readOnly"] is True
    assert volumes["tls-mqtts"]["secret"]["secretName"] == "srv"
    assert volumes["tls-wss"]["secret"]["secretName"] == "srv"
    assert volumes["ca-mqtts"]["configMap"]["name"] == "bundle"
    assert volumes["issuerca-wss"]["configMap"]["name"] == "issuer-roots"  # the pinned issuer CAs
    assert "issuerca-mqtts" not in volumes
    assert volumes["keypass-mqtts"]["secret"]["secretName"] == "keypass"
    assert volumes["psk"]["secret"]["secretName"] == "psk"
    assert volumes["admin-token"]["secret"]["secretName"] == "b-admin-token"


def test_pod_template_has_no_certificate_content_and_sensible_defaults():
    sts = _statefulset()
    template = sts["spec"]["template"]
    assert set(template["metadata"]["annotations"]) == {resources.CONFIG_HASH_ANNOTATION, "example.com/team"}
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["args"] == ["--config", "/etc/wharf/config/wharf.conf"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"mqtts": 8883, "wss": 8084, "admin": 18083,
                                                                          "metrics": 9184}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"
    assert sts["spec"]["replicas"] == 3


def test_certificate_names_the_services():
    certificate = resources.certificate("b", "ns", SPEC)
    assert certificate["spec"]["secretName"] == "srv"
    assert certificate["spec"]["issuerRef"] == {"name": "ca-issuer", "kind": "Issuer", "group": "cert-manager.io"}
    assert certificate["spec"]["dnsNames"] == ["b", "b.ns", "b.ns.svc", "b.ns.svc.cluster.local",
                                               "*.b-headless.ns.svc", "*.b-headless.ns.svc.cluster.local",
                                               "mqtt.example.com"]
    assert resources.certificate("b", "ns", defaulted_spec({})) is None


def test_services_and_pdb():
    client = resources.client_service("b", "ns", SPEC)
    headless = resources.headless_service("b", "ns", SPEC)
    assert [p["port"] for p in client["spec"]["ports"]] == [8883, 8084]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    # The headless Service names the read-only metrics port (what a PodMonitor or a scrape config finds); the
    # client Service carries the MQTT listeners only.
    assert [(p["name"], p["port"]) for p in headless["spec"]["ports"]] == [
        ("mqtts", 8883), ("wss", 8084), ("admin", 18083), ("metrics", 9184)]
    assert resources.pod_disruption_budget("b", "ns", SPEC)["spec"]["maxUnavailable"] == 1


def test_admin_tokens_are_random():
    first = resources.admin_token_secret("b", "ns")["data"]["token"]
    second = resources.admin_token_secret("b", "ns")["data"]["token"]
    assert first != second and len(base64.b64decode(first)) >= 32


def test_is_subset_ignores_server_defaults_but_sees_changes():
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    live = {"spec": {"replicas": 2, "revisionHistoryLimit": 10,
                     "template": {"spec": {"containers": [{"name": "c", "image": "x", "terminationMessagePath": "/t"}],
                                           "dnsPolicy": "ClusterFirst"}}}}
    assert resources.is_subset(desired, live)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "y"
    assert not resources.is_subset(desired, live)


def test_credentials_from_a_kubeconfig_with_client_certificates(tmp_path):
    ca = make_ca("Cluster CA")
    user = make_leaf(ca, "operator")
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority-data": base64.b64encode(ca.cert_pem).decode()}}],
        "users": [{"name": "u", "user": {
            "client-certificate-data": base64.b64encode(user.cert_pem).decode(),
            "client-key-data": base64.b64encode(user.key_pem()).decode()}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    creds = credentials.load(str(kubeconfig))
    assert creds.server == "https://127.0.0.1:6443"
    assert open(creds.ca_path, "rb").read() == ca.cert_pem
    assert creds.certificate_path and creds.private_key_path and creds.token is None
    context = creds.ssl_context()  # loads the CA and the client pair: a broken file fails here
    assert context.verify_mode.name == "CERT_REQUIRED"
    info = creds.connection_info()
    assert info.server == creds.server and info.certificate_path == creds.certificate_path
