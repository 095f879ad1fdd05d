"""The project's MQTTBroker CRD on the real apiserver: the shipped examples are accepted and
defaulted; invalid brokers are refused with the schema or CEL message a kubectl user sees."""

from __future__ import annotations

import copy
import json

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException
from realapi_support import REPO

GROUP, VERSION, PLURAL = "mqtt.wharf.dev", "v1alpha1", "mqttbrokers"
CRD_NAME = f"{PLURAL}.{GROUP}"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def brokers(api, mqttbroker_crd) -> kubernetes.client.CustomObjectsApi:
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


# The same TLS cases for the CRD's schema and CEL rules and for the broker's table of ssl_options rules
# (broker/config/tls_rules.py, the one the config loader, the TLS layer and the Dashboard apply): the API server
# refuses a listener's tls exactly when the ssl_options the operator renders from it break a rule of the table,
# and its message names the CRD field the broken rule is about. Case → (tls fields, keys the table refuses).
TLS_CASES: dict[str, tuple[dict, set[str]]] = {
    "defaults": ({}, set()),
    "mutual-tls": ({"verify": "verify_peer", "caRef": {"name": "clients-ca"}, "failIfNoPeerCert": True,
                    "enableCrlCheck": True}, set()),
    "fail-if-no-peer-cert-without-verify": ({"failIfNoPeerCert": True}, {"fail_if_no_peer_cert"}),
    "verify-peer-without-ca": ({"verify": "verify_peer"}, {"cacertfile"}),
    "crl-check-without-verify": ({"enableCrlCheck": True}, {"enable_crl_check"}),
    "no-versions": ({"versions": []}, {"versions"}),
    "unknown-version": ({"versions": ["tlsv1.3", "sslv3"]}, {"versions"}),
    "tls-1-3-only": ({"versions": ["tlsv1.3"]}, set()),
    "legacy-versions": ({"versions": ["tlsv1.2", "tlsv1.1", "tlsv1"]}, set()),
    "depth-0": ({"depth": 0}, set()),
    "negative-depth": ({"depth": -1}, {"depth"}),
    "depth-100": ({"depth": 100}, set()),
    "depth-too-large": ({"depth": 101}, {"depth"}),
    "duplicate-version": ({"versions": ["tlsv1.2", "tlsv1.2"]}, {"versions"}),
    "unknown-tls-1-3-suite": ({"ciphers": ["TLS_AES_256_GCM_SHA384", "TLS_NOT_A_SUITE"]}, {"ciphers"}),
    "ocsp-responder-not-http": ({"ocspStapling": {"enabled": True, "responderUrl": "ftp://ocsp.example/"}},
                                {"ocsp.responder_url"}),
    "known-ciphers": ({"ciphers": ["TLS_AES_256_GCM_SHA384", "ECDHE-RSA-AES128-GCM-SHA256"]}, set()),
    "ocsp-without-responder": ({"ocspStapling": {"enabled": True, "responderUrl": ""}}, {"ocsp.responder_url"}),
    "ocsp-with-responder": ({"ocspStapling": {"enabled": True, "responderUrl": "http://ocsp.example/"}}, set()),
}
# Table key → the CRD field the API server's message names.
CRD_FIELDS = {"fail_if_no_peer_cert": "failIfNoPeerCert", "cacertfile": "caRef", "enable_crl_check": "enableCrlCheck",
              "versions": "versions", "depth": "depth", "ocsp.responder_url": "responderUrl", "ciphers": "ciphers"}


def _table_problems(tls: dict) -> set[str]:
    """The keys the broker's table refuses in the ssl_options the operator renders for ``tls``."""
    from wharf_broker.config.loader import parse_duration
    from wharf_broker.config.model import OcspOptions, SslOptions
    from wharf_broker.config.tls_rules import check_ssl_options
    from wharf_operator.render import ssl_options

    rendered = ssl_options({"name": "mqtts", "tls": {"secretName": "wharf-tls", **tls}}, "120s")
    ocsp = dict(rendered.pop("ocsp", {}))
    if "refresh_interval" in ocsp:
        ocsp["refresh_interval"] = parse_duration(ocsp["refresh_interval"])
    rendered["reload_interval"] = parse_duration(rendered["reload_interval"])
    return {problem.field for problem in check_ssl_options(SslOptions(**rendered, ocsp=OcspOptions(**ocsp)))}


@pytest.mark.parametrize("case", list(TLS_CASES))
def test_crd_tls_rules_agree_with_the_brokers_options_table(brokers, namespace, case):
    tls, refused_keys = TLS_CASES[case]
    assert _table_problems(tls) == refused_keys  # the case says what the table says
    body = _with(lambda s: s["listeners"][1]["tls"].update(copy.deepcopy(tls)))
    body["metadata"]["name"] = f"tls-{case}"[:63]
    if not refused_keys:
        brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return
    with pytest.raises(ApiException) as refused:
        brokers.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    for key in refused_keys:
        assert CRD_FIELDS[key] in message, message
