"""The MQTTBroker CRD: one source, documented, defaulted, and its CEL rules refuse what they should.

The schema is checked offline with jsonschema and the CEL rules are evaluated with cel-python on the same
objects the API server would see (after defaulting). The real API server's verdict is the real-API suite's job.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from wharf_operator import crd

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "crds" / "mqttbrokers.mqtt.wharf.dev.yaml"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def _schema() -> dict:
    return crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_manifest_file_is_generated_from_crd_py():
    assert CRD_FILE.read_text() == crd.render_yaml(), \
        "manifests/crds is stale: run python -m wharf_operator.crd > " + str(CRD_FILE.relative_to(REPO))


def test_identity_subresources_and_columns():
    manifest = yaml.safe_load(CRD_FILE.read_text())
    assert manifest["metadata"]["name"] == "mqttbrokers.mqtt.wharf.dev"
    names = manifest["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("MQTTBroker", "mqttbrokers", ["mqb"])
    version = manifest["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Replicas", "Available", "Cert-Expiry", "Age"]


def _walk(schema: dict, path: str):
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_field_has_a_description():
    missing = [path for path, node in _walk(_schema()["properties"]["spec"], "spec") if not node.get("description")]
    missing += [path for path, node in _walk(_schema()["properties"]["status"], "status")
                if not node.get("description")]
    assert missing == []


def test_structural_schema_every_node_has_a_type():
    untyped = [path for path, node in _walk(_schema(), "") if "type" not in node]
    assert untyped == []


def test_defaults_fill_an_empty_spec():
    spec = crd.defaulted_spec({})
    assert spec["replicas"] == 1
    assert spec["listeners"] == [{"name": "mqtt", "type": "tcp", "port": 1883, "proxyProtocol": False}]
    assert spec["service"] == {"type": "ClusterIP"}
    assert spec["reloadInterval"] == "120s"
    assert spec["podDisruptionBudget"] == {"maxUnavailable": 1}


def test_defaults_inside_tls():
    spec = crd.defaulted_spec({"listeners": [{"name": "s", "type": "ssl", "port": 8883,
                                              "tls": {"secretName": "x", "caRef": {"name": "ca"},
                                                      "trustedIssuerCARef": {"name": "issuers"}}}]})
    tls = spec["listeners"][0]["tls"]
    assert tls["verify"] == "verify_none" and tls["failIfNoPeerCert"] is False
    assert tls["versions"] == ["tlsv1.3", "tlsv1.2"] and tls["depth"] == 10
    assert tls["caRef"] == {"name": "ca", "kind": "Secret", "key": "ca.crt"}
    assert tls["trustedIssuerCARef"] == {"name": "issuers", "kind": "Secret", "key": "ca.crt"}


# --- CEL rules, evaluated with cel-python ----------------------------------------------------------------

def _rule_sites(schema: dict, value, path: str = "spec"):
    """Yield (path, rule, value) for every x-kubernetes-validations rule that applies to ``value``."""
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, rule, value
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                yield from _rule_sites(sub, value[key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _rule_sites(schema["items"], item, f"{path}[{index}]")


def cel_violations(spec: dict) -> list[str]:
    celpy = pytest.importorskip("celpy", reason="cel-python is not installed")
    env = celpy.Environment()
    messages = []
    for _path, rule, value in _rule_sites(crd.spec_schema(), crd.defaulted_spec(spec)):
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            messages.append(rule["message"])
    return messages


def _ssl(**tls) -> dict:
    return {"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883, "tls": {"secretName": "x", **tls}}]}


@pytest.mark.parametrize("spec, message", [
    (_ssl(failIfNoPeerCert=True), "failIfNoPeerCert needs verify: verify_peer"),
    (_ssl(verify="verify_peer"), "verify: verify_peer needs caRef (a trusted CA bundle)"),
    (_ssl(enableCrlCheck=True), "enableCrlCheck needs verify: verify_peer"),
    (_ssl(peerCertAsClientid="cn"), "peerCertAsUsername/peerCertAsClientid need verify: verify_peer"),
    (_ssl(ciphers=["PSK-AES128-GCM-SHA256"], versions=["tlsv1.3"]),
     "PSK cipher suites need TLS 1.2 or older in versions: PSK is not offered with TLS 1.3 only"),
    (_ssl(ocspStapling={"enabled": True}), "ocspStapling.enabled needs responderUrl"),
    (_ssl(ocspStapling={"enabled": True, "responderUrl": "ftp://ocsp.example/"}),
     "ocspStapling.responderUrl must be an http:// or https:// URL"),
    (_ssl(ciphers=["TLS_AES_256_GCM_SHA384", "TLS_NOT_A_SUITE"]), "ciphers: a name starting with TLS_ must be a TLS 1.3 "
     "suite: TLS_AES_128_CCM_8_SHA256, TLS_AES_128_CCM_SHA256, TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, "
     "TLS_CHACHA20_POLY1305_SHA256"),
    ({"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883}]},
     "ssl and wss listeners need tls; tcp and ws listeners must not have it"),
    ({"listeners": [{"name": "m", "type": "tcp", "port": 1883, "tls": {"secretName": "x"}}]},
     "ssl and wss listeners need tls; tcp and ws listeners must not have it"),
    ({"listeners": [{"name": "m", "type": "tcp", "port": 1883, "websocket": {"path": "/x"}}]},
     "websocket settings only apply to ws and wss listeners"),
    ({"listeners": [{"name": "m", "type": "tcp", "port": 18083}]}, "port 18083 is the broker's admin API"),
    ({"listeners": [{"name": "m", "type": "tcp", "port": 9184}]}, "port 9184 is the broker's metrics port"),
    ({"listeners": [{"name": "metrics", "type": "tcp", "port": 1883}]},
     "listener name must not be 'admin' nor 'metrics' nor contain '--'"),
    ({"listeners": [{"name": "a", "type": "tcp", "port": 1883}, {"name": "b", "type": "ws", "port": 1883}]},
     "listener ports must be unique"),
    ({"listeners": [{"name": "m", "type": "tcp", "port": 1883, "proxyProtocol": True}]},
     "proxyProtocol needs proxyProtocolTrustedCIDRs (the load balancers' addresses)"),
    ({"listeners": [{"name": "m", "type": "tcp", "port": 1883, "proxyProtocol": True,
                     "proxyProtocolTrustedCIDRs": []}]},
     "proxyProtocol needs proxyProtocolTrustedCIDRs (the load balancers' addresses)"),
    ({"listeners": [{"name": "m", "type": "wss", "port": 8084, "tls": {"secretName": "x"}, "proxyProtocol": True,
                     "proxyProtocolTrustedCIDRs": ["10.0.0.0/8"]}]},
     "proxyProtocol is not supported on wss listeners"),
    ({"pskAuthentication": {"enabled": True}}, "pskAuthentication.enabled needs secretRef"),
    (_ssl(trustedIssuerCARef={"name": "x"}),
     "trustedIssuerCARef must not be the server Secret: its issuer writes that Secret's ca.crt"),
    ({**_ssl(), "certificate": {"issuerRef": {"name": "ca"}, "secretName": "other"}},
     "certificate.secretName must be the tls.secretName of a listener"),
])
def test_invalid_combinations_are_refused(spec, message):
    assert message in cel_violations(spec)


@pytest.mark.parametrize("spec", [
    {},
    _ssl(),
    _ssl(verify="verify_peer", caRef={"name": "ca"}, failIfNoPeerCert=True, enableCrlCheck=True,
         peerCertAsUsername="cn"),
    _ssl(ciphers=["PSK-AES128-GCM-SHA256"], versions=["tlsv1.3", "tlsv1.2"]),
    _ssl(ciphers=["TLS_AES_256_GCM_SHA384", "ECDHE-RSA-AES128-GCM-SHA256"],
         ocspStapling={"enabled": True, "responderUrl": "https://ocsp.example/"}),
    _ssl(trustedIssuerCARef={"name": "issuer-trust"}),
    _ssl(trustedIssuerCARef={"name": "x", "kind": "ConfigMap"}),  # a ConfigMap of the same name is another object
    {**_ssl(), "certificate": {"issuerRef": {"name": "ca"}, "secretName": "x"}},
    {"listeners": [{"name": "m", "type": "tcp", "port": 1883, "proxyProtocol": True,
                    "proxyProtocolTrustedCIDRs": ["192.0.2.10/32", "2001:db8::/64"]}]},
    {"networkPolicy": {"enabled": False}},
    {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]}},
])
def test_valid_specs_pass_every_rule(spec):
    assert cel_violations(spec) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_mqttbrokers(path):
    brokers = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "MQTTBroker"]
    assert brokers, f"{path.name} has no MQTTBroker"
    for broker in brokers:
        jsonschema.validate(broker, _schema())
        assert cel_violations(broker["spec"]) == []


def test_network_policy_is_left_to_the_operator_unless_set():
    """No CRD default for networkPolicy.enabled: unset means the operator's --network-policy (on in the chart)."""
    assert crd.defaulted_spec({})["networkPolicy"] == {}
    jsonschema.validate({"spec": {"networkPolicy": {"enabled": True, "metricsFrom": [{"ipBlock": {
        "cidr": "10.0.0.0/8"}}]}}}, _schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {"networkPolicy": {"enabled": "yes"}}}, _schema())


def test_schema_refuses_wrong_types():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {"listeners": [{"name": "m", "type": "tcp", "port": 70000}]}}, _schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {"listeners": [{"name": "m", "type": "quic", "port": 1}]}}, _schema())


@pytest.mark.parametrize("cidr, valid", [
    ("192.0.2.10/32", True), ("10.0.0.0/8", True), ("192.0.2.10", True), ("2001:db8::/64", True), ("::/0", True),
    ("::ffff:192.0.2.1/128", True), ("lb.example", False), ("10.0.0.0/33", False), ("2001:db8::/129", False),
    ("", False), ("10.0.0.0/8 ", False),
])
def test_trusted_cidrs_have_the_shape_of_networks(cidr, valid):
    spec = {"listeners": [{"name": "m", "type": "tcp", "port": 1883, "proxyProtocol": True,
                           "proxyProtocolTrustedCIDRs": [cidr]}]}
    if valid:
        jsonschema.validate({"spec": spec}, _schema())
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"spec": spec}, _schema())


# The spec digest of every schema revision (crd.SCHEMA_REVISION). A change of the CRD's spec fails here until the
# revision is bumped and its digest added: the operator upgrades an installed CRD only to a higher revision.
REVISION_DIGESTS = {1: "9a42e58691a573aa", 2: "58938e646c9b9207", 3: "970a54d8276d4a76"}


def test_schema_changes_bump_the_revision():
    manifest = crd.crd_manifest()
    digest = crd.spec_digest(manifest["spec"])
    assert REVISION_DIGESTS.get(crd.SCHEMA_REVISION) == digest, (
        f"the CRD's spec changed (digest {digest}): bump crd.SCHEMA_REVISION and record the digest here")
    assert crd.SCHEMA_REVISION == max(REVISION_DIGESTS)
    annotations = manifest["metadata"]["annotations"]
    assert annotations == {crd.REVISION_ANNOTATION: str(crd.SCHEMA_REVISION), crd.DIGEST_ANNOTATION: digest}


def _annotated(revision: int | None, digest: str | None) -> dict:
    annotations = {}
    if revision is not None:
        annotations[crd.REVISION_ANNOTATION] = str(revision)
    if digest is not None:
        annotations[crd.DIGEST_ANNOTATION] = digest
    return {"metadata": {"annotations": annotations}}


@pytest.mark.parametrize("revision, digest, verdict", [
    (None, None, "apply"),  # a CRD from a chart before revisions existed
    (crd.SCHEMA_REVISION - 1, "0000", "apply"),
    (crd.SCHEMA_REVISION, "edited", "apply"),  # same revision, another spec: a hand edit
    (crd.SCHEMA_REVISION, None, "current"),  # replaced below by the real digest
    (crd.SCHEMA_REVISION + 1, "ffff", "newer"),  # a newer operator's schema: never downgraded
])
def test_upgrade_decision(revision, digest, verdict):
    from wharf_operator import crd_upgrade

    desired = crd.crd_manifest()
    if verdict == "current":
        digest = desired["metadata"]["annotations"][crd.DIGEST_ANNOTATION]
    assert crd_upgrade.decide(_annotated(revision, digest), desired) == verdict

