"""The project's MQTTBroker CRD on the real apiserver: the shipped examples are accepted and
defaulted; invalid brokers are refused with the schema or CEL message a kubectl user sees."""

from __future__ import annotations

import copy
import json

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException
from realapi_support import REPO, project_crds, wait_for

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
CRD_NAME = f"{PLURAL}.{GROUP}"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def brokers(api) -> kubernetes.client.CustomObjectsApi:
    files = [path for path in project_crds() if path.name == f"{CRD_NAME}.yaml"]
    if not files:
        pytest.fail(f"manifests/crds/{CRD_NAME}.yaml is missing")
    extensions = kubernetes.client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(yaml.safe_load(files[0].read_text()))
    except ApiException as error:
        if error.status != 409:  # installed by an earlier module of this session
            raise
    wait_for(lambda: any(c.type == "Established" and c.status == "True"
                         for c in extensions.read_custom_resource_definition(CRD_NAME).status.conditions or []),
             "MQTTBroker CRD Established")
    return kubernetes.client.CustomObjectsApi(api)


def _brokers_in(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "MQTTBroker"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_is_accepted_and_defaulted(brokers, namespace, example):
    documents = _brokers_in(example)
    assert documents, f"{example.name} holds no MQTTBroker"
    for document in documents:
        stored = brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)
        spec = stored["spec"]
        # Fields the example leaves out come back with the CRD's defaults.
        assert spec["terminationGracePeriodSeconds"] == 30
        assert spec["reloadInterval"] == document["spec"].get("reloadInterval", "120s")
        assert spec["podDisruptionBudget"]["maxUnavailable"] == 1
        assert all(listener["proxyProtocol"] is False for listener in spec["listeners"])
        assert [l["name"] for l in spec["listeners"]] == [l["name"] for l in document["spec"]["listeners"]]


BASE = {
    "apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "metadata": {"name": "bad"},
    "spec": {"replicas": 1, "listeners": [
        {"name": "mqtt", "type": "tcp", "port": 1883},
        {"name": "mqtts", "type": "ssl", "port": 8883, "tls": {"secretName": "wharf-tls"}},
    ]},
}


def _with(change) -> dict:
    body = copy.deepcopy(BASE)
    change(body["spec"])
    return body


INVALID = {
    "duplicate-ports": (lambda s: s["listeners"][1].update(port=1883), "listener ports must be unique"),
    "ssl-without-tls": (lambda s: s["listeners"][1].pop("tls"),
                        "ssl and wss listeners need tls; tcp and ws listeners must not have it"),
    "admin-port": (lambda s: s["listeners"][0].update(port=18083), "port 18083 is the broker's admin API"),
    "metrics-port": (lambda s: s["listeners"][0].update(port=9184), "port 9184 is the broker's metrics port"),
    "verify-peer-without-ca": (lambda s: s["listeners"][1]["tls"].update(verify="verify_peer"),
                               "verify: verify_peer needs caRef (a trusted CA bundle)"),
    "too-many-replicas": (lambda s: s.update(replicas=101),
                          ("spec.replicas: Invalid value: 101: spec.replicas in body should be less than or "
                           "equal to 100")),
    "no-listeners": (lambda s: s.update(listeners=[]),
                     "spec.listeners: Invalid value: 0: spec.listeners in body should have at least 1 items"),
    "proxy-protocol-without-trusted-cidrs": (lambda s: s["listeners"][1].update(proxyProtocol=True),
                                             "proxyProtocol needs proxyProtocolTrustedCIDRs"),
    "proxy-protocol-with-a-hostname": (lambda s: s["listeners"][1].update(proxyProtocol=True,
                                                                         proxyProtocolTrustedCIDRs=["lb.example"]),
                                       "proxyProtocolTrustedCIDRs[0]"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_broker_is_refused_with_the_api_message(brokers, namespace, case):
    change, expected = INVALID[case]
    with pytest.raises(ApiException) as refused:
        brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _with(change))
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert message.startswith('MQTTBroker.mqtt.wharf.dev "bad" is invalid'), message
    assert expected in message, message
    assert brokers.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []


def test_the_valid_base_is_accepted(brokers, namespace):
    """The refusals above come from each single change, not from the base object."""
    stored = brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, copy.deepcopy(BASE))
    assert stored["metadata"]["name"] == "bad"


def test_proxy_protocol_with_trusted_cidrs_is_accepted(brokers, namespace):
    body = _with(lambda s: s["listeners"][1].update(proxyProtocol=True,
                                                     proxyProtocolTrustedCIDRs=["10.0.0.0/16", "2001:db8::/64"]))
    stored = brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert stored["spec"]["listeners"][1]["proxyProtocolTrustedCIDRs"] == ["10.0.0.0/16", "2001:db8::/64"]
