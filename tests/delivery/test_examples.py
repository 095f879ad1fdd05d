"""The example custom resources in manifests/examples/ against the CRD's schema (offline approximation)."""

from __future__ import annotations

import copy

import pytest
import yaml
from delivery_support import ROOT, SUPPORTED_KUBERNETES, custom_resource_errors, kubernetes_errors

EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
THIRD_PARTY = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "ClusterIssuer"),
               ("cert-manager.io/v1", "Certificate")}


def documents(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_three_install_examples_exist() -> None:
    kinds = {path.name: {doc["kind"] for doc in documents(path)} for path in EXAMPLES}
    assert {"one-way-tls.yaml", "mtls.yaml", "cert-manager.yaml"} <= set(kinds)
    assert {"Issuer", "Certificate", "MQTTBroker"} <= kinds["cert-manager.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path, crd: dict) -> None:
    errors = []
    for doc in documents(path):
        if doc["kind"] == "MQTTBroker":
            errors += custom_resource_errors(crd, doc)
        elif (doc["apiVersion"], doc["kind"]) in THIRD_PARTY:
            assert doc["metadata"]["name"] and doc["spec"], f"{doc['kind']} without a name or spec"
        else:
            errors += kubernetes_errors(doc, SUPPORTED_KUBERNETES[-1])
    assert errors == []


def test_cert_manager_example_wires_certificate_to_broker() -> None:
    docs = documents(ROOT / "manifests" / "examples" / "cert-manager.yaml")
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    secrets = {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}
    for doc in docs:
        if doc["kind"] == "Certificate":
            assert doc["spec"]["issuerRef"]["name"] in issuers
        if doc["kind"] == "MQTTBroker":
            spec = doc["spec"]
            referenced = {l["tls"]["secretName"] for l in spec["listeners"] if "tls" in l}
            managed = {spec["certificate"]["secretName"]} if "certificate" in spec else set()
            assert referenced and referenced <= secrets | managed
            if "certificate" in spec:
                assert spec["certificate"]["issuerRef"]["name"] in issuers


@pytest.mark.parametrize("breakage, message", [
    (lambda s: s["listeners"][0].__setitem__("port", 70000), "70000 is greater than the maximum"),
    (lambda s: s["listeners"][0].__setitem__("type", "quic"), "'quic' is not one of"),
    (lambda s: s.__setitem__("replicas", "three"), "'three' is not of type 'integer'"),
    (lambda s: s["listeners"][0]["tls"].pop("secretName"), "'secretName' is a required property"),
])
def test_the_schema_check_catches_broken_resources(crd: dict, breakage, message: str) -> None:
    broker = next(d for d in documents(ROOT / "manifests" / "examples" / "mtls.yaml") if d["kind"] == "MQTTBroker")
    broken = copy.deepcopy(broker)
    breakage(broken["spec"])
    errors = custom_resource_errors(crd, broken)
    assert any(message in error for error in errors), errors
