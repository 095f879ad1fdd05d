"""CustomResourceDefinitions on the real apiserver: structural schema, defaulting, pruning and
CEL rules are enforced by Kubernetes itself, with the messages a user of kubectl would see."""

from __future__ import annotations

import json

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException
from realapi_support import project_crds, wait_for

GROUP, VERSION, PLURAL = "probe.wharf.dev", "v1", "gadgets"

PROBE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP, "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
        "versions": [{
            "name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object", "required": ["replicas"],
                        "x-kubernetes-validations": [
                            {"rule": "self.minReplicas <= self.maxReplicas",
                             "message": "minReplicas must not exceed maxReplicas"},
                            {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"},
                        ],
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 1, "maximum": 9},
                            "port": {"type": "integer", "default": 8883},
                            "mode": {"type": "string", "enum": ["tls", "mtls"], "default": "tls"},
                            "minReplicas": {"type": "integer", "default": 1},
                            "maxReplicas": {"type": "integer", "default": 3},
                        },
                    },
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}


def _install(api, crd: dict) -> None:
    extensions = kubernetes.client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(crd)
    except ApiException as error:
        if error.status != 409:
            raise
    name = crd["metadata"]["name"]

    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, f"CRD {name} Established")


@pytest.fixture(scope="module")
def gadgets(api) -> kubernetes.client.CustomObjectsApi:
    _install(api, PROBE_CRD)
    objects = kubernetes.client.CustomObjectsApi(api)
    # Discovery for a new group can lag Established by a moment.
    wait_for(lambda: objects.list_cluster_custom_object(GROUP, VERSION, PLURAL) is not None, "gadgets served")
    return objects


def _gadget(name: str, spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gadget", "metadata": {"name": name}, "spec": spec}


def _refusal(call) -> tuple[int, str]:
    with pytest.raises(ApiException) as refused:
        call()
    body = json.loads(refused.value.body)
    return refused.value.status, body["message"]


def test_valid_object_is_stored_with_defaults_and_unknown_fields_pruned(gadgets, namespace):
    created = gadgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _gadget("ok", {"replicas": 2, "colour": "blue"}))
    assert created["spec"] == {"replicas": 2, "port": 8883, "mode": "tls", "minReplicas": 1, "maxReplicas": 3}
    stored = gadgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ok")
    assert stored["spec"] == created["spec"]


def test_schema_violations_are_refused_with_the_api_message(gadgets, namespace):
    status, message = _refusal(lambda: gadgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _gadget("big", {"replicas": 20})))
    assert status == 422
    assert "spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 9" in message

    status, message = _refusal(lambda: gadgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _gadget("odd", {"replicas": 1, "mode": "plain"})))
    assert status == 422
    assert 'spec.mode: Unsupported value: "plain": supported values: "tls", "mtls"' in message

    status, message = _refusal(lambda: gadgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _gadget("none", {})))
    assert status == 422 and "spec.replicas: Required value" in message
    assert gadgets.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []


def test_cel_rules_refuse_bad_objects_and_bad_transitions(gadgets, namespace):
    status, message = _refusal(lambda: gadgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _gadget("inverted", {"replicas": 1, "minReplicas": 5, "maxReplicas": 2})))
    assert status == 422
    assert "spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas" in message

    gadgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                            _gadget("fixed", {"replicas": 1, "mode": "tls"}))
    status, message = _refusal(lambda: gadgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "fixed", {"spec": {"mode": "mtls"}}))
    assert status == 422 and "mode is immutable" in message
    # The refused update changed nothing; an allowed one goes through.
    gadgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixed", {"spec": {"replicas": 4}})
    stored = gadgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixed")
    assert stored["spec"]["mode"] == "tls" and stored["spec"]["replicas"] == 4


def test_status_is_a_subresource(gadgets, namespace):
    gadgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _gadget("st", {"replicas": 1}))
    # Writing status through the main resource is ignored; through /status it sticks.
    gadgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "st", {"status": {"phase": "Wrong"}})
    assert "status" not in gadgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "st")
    gadgets.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "st",
                                                  {"status": {"phase": "Ready"}})
    assert gadgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "st")["status"] == {"phase": "Ready"}


@pytest.mark.parametrize("crd_file", project_crds(), ids=lambda path: path.name)
def test_project_crd_installs_and_is_established(api, crd_file):
    for document in yaml.safe_load_all(crd_file.read_text()):
        if document and document.get("kind") == "CustomResourceDefinition":
            _install(api, document)
