"""The pure parts of reconciliation: the builders (spec → owned objects) and the status computed from what was
observed (``status.compose``)."""

from __future__ import annotations

import dataclasses

from wharf_operator import builders, kube, render, resources
from wharf_operator import status as st
from wharf_operator.crd import defaulted_spec

SPEC = {"replicas": 2, "listeners": [{"name": "mqtts", "type": "ssl", "port": 8883,
                                      "tls": {"secretName": "broker-tls"}}]}


def _inputs(spec: dict, default_image: str = resources.DEFAULT_BROKER_IMAGE) -> builders.Inputs:
    spec = defaulted_spec(spec)
    tree = render.config_tree(spec, broker="wharf", namespace="ns")
    return builders.Inputs("wharf", "ns", "uid-1", spec, render.to_hocon(tree), "live", render.restart_hash(tree),
                           default_image)


def _by_key(objects: list[builders.Desired]) -> dict[str, dict]:
    return {f"{d.kind}/{d.name}": d.body for d in objects}


def test_every_desired_object_is_owned_by_the_broker_and_only_the_token_is_create_only():
    objects = builders.desired_objects(_inputs(SPEC))
    assert sorted(_by_key(objects)) == ["ConfigMap/wharf-config", "NetworkPolicy/wharf", "PodDisruptionBudget/wharf",
                                        "Secret/wharf-admin-token", "Service/wharf", "Service/wharf-headless",
                                        "ServiceAccount/wharf", "StatefulSet/wharf"]
    for desired in objects:
        assert desired.body["metadata"]["ownerReferences"] == [builders.owner_reference(_inputs(SPEC))]
    assert [d.kind for d in objects if d.create_only] == ["Secret"]
    # The StatefulSet comes after what its pods mount, and the NetworkPolicy before any pod runs.
    assert objects[-1].kind == "StatefulSet"
    assert objects[0].kind == "NetworkPolicy"


def test_a_removed_spec_field_is_absent_from_the_desired_objects():
    extra = {"tolerations": [{"key": "k", "operator": "Exists"}], "nodeSelector": {"zone": "a"},
             "affinity": {"podAntiAffinity": {}}, "podAnnotations": {"a": "b"},
             "service": {"annotations": {"lb": "internal"}}}
    with_fields = _by_key(builders.desired_objects(_inputs({**SPEC, **extra})))
    without = _by_key(builders.desired_objects(_inputs(SPEC)))
    pod = with_fields["StatefulSet/wharf"]["spec"]["template"]
    assert pod["spec"]["tolerations"] and pod["spec"]["nodeSelector"] and pod["metadata"]["annotations"]["a"] == "b"
    assert with_fields["Service/wharf"]["metadata"]["annotations"] == {"lb": "internal"}
    pod = without["StatefulSet/wharf"]["spec"]["template"]
    assert not {"tolerations", "nodeSelector", "affinity"} & set(pod["spec"])
    assert list(pod["metadata"]["annotations"]) == [resources.CONFIG_HASH_ANNOTATION]
    assert "annotations" not in without["Service/wharf"]["metadata"]


def test_a_deployed_nats_is_built_or_listed_as_unwanted():
    deployed = _inputs({**SPEC, "cluster": {"nats": {"deploy": True}}})
    assert "StatefulSet/wharf-nats" in _by_key(builders.desired_objects(deployed))
    assert builders.unwanted(deployed) == []
    plain = _inputs(SPEC)
    assert "StatefulSet/wharf-nats" not in _by_key(builders.desired_objects(plain))
    assert {name for _, name in builders.unwanted(plain)} >= {"wharf-nats", "wharf-nats-config"}


def _broker_image(inputs: builders.Inputs) -> str:
    (container,) = _by_key(builders.desired_objects(inputs))["StatefulSet/wharf"]["spec"]["template"]["spec"][
        "containers"]
    return container["image"]


def test_the_broker_image_is_the_operators_default_unless_the_spec_names_one():
    assert "image" not in defaulted_spec(SPEC)  # nothing stored in the object: the default is the operator's
    assert _broker_image(_inputs(SPEC, "registry.test/wharf:1.2.3")) == "registry.test/wharf:1.2.3"
    assert _broker_image(_inputs(SPEC)) == resources.DEFAULT_BROKER_IMAGE
    pinned = {**SPEC, "image": "registry.test/wharf:pinned"}
    assert _broker_image(_inputs(pinned, "registry.test/wharf:1.2.3")) == "registry.test/wharf:pinned"
    # A new operator default changes the pod template (the StatefulSet rolls) and nothing else it builds.
    old = _by_key(builders.desired_objects(_inputs(SPEC, "wharf:old")))
    new = _by_key(builders.desired_objects(_inputs(SPEC, "wharf:new")))
    assert [key for key in old if key != "Secret/wharf-admin-token" and old[key] != new[key]] == ["StatefulSet/wharf"]


def test_status_reports_the_image_of_the_statefulset_once_there_is_one():
    assert st.compose({}, _observed(image="wharf:new"))["image"] == "wharf:new"
    assert "image" not in st.compose({"image": "wharf:old"}, _observed())  # not looked at: the merge patch keeps it


OPERATOR_LABELS = {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/instance": "ops",
                   "app.kubernetes.io/component": "operator"}


def _policy_inputs(spec: dict, default: bool = True) -> builders.Inputs:
    plain = _inputs(spec)
    return dataclasses.replace(plain, network_policy_default=default,
                               operator_peer=resources.operator_peer("wharf-system", OPERATOR_LABELS))


def _port_rules(policy: dict) -> dict[int, list | None]:
    """Each allowed port and who may reach it (None: anyone)."""
    rules: dict[int, list | None] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            assert port["port"] not in rules, f"port {port['port']} in two rules"
            rules[port["port"]] = rule.get("from")
    return rules


def test_the_network_policy_admits_mqtt_and_metrics_and_the_admin_port_only_from_the_operator():
    spec = {**SPEC, "listeners": SPEC["listeners"] + [{"name": "ws", "type": "ws", "port": 8083}]}
    objects = _by_key(builders.desired_objects(_policy_inputs(spec)))
    policy = objects["NetworkPolicy/wharf"]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"]["podSelector"] == {"matchLabels": resources.selector_labels("wharf")}
    assert policy["spec"]["podSelector"] == objects["StatefulSet/wharf"]["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress (NATS, HTTP authentication, DNS) is left open
    assert _port_rules(policy) == {
        8883: None, 8083: None, 9184: None,
        18083: [{"podSelector": {"matchLabels": OPERATOR_LABELS},
                 "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "wharf-system"}}}]}
    # The ports it names are the pods' ports.
    container = objects["StatefulSet/wharf"]["spec"]["template"]["spec"]["containers"][0]
    assert set(_port_rules(policy)) == {port["containerPort"] for port in container["ports"]}
    assert policy["metadata"]["labels"] == resources.labels("wharf")
    assert (kube.NETWORKPOLICIES, "wharf") not in builders.unwanted(_policy_inputs(spec))


def test_metrics_can_be_restricted_and_the_policy_turned_off():
    peers = [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    restricted = _by_key(builders.desired_objects(_policy_inputs({**SPEC, "networkPolicy": {"metricsFrom": peers}})))
    assert _port_rules(restricted["NetworkPolicy/wharf"])[9184] == peers
    # Off in the spec: not built, and listed as unwanted so that one the broker owned before is deleted.
    off = _policy_inputs({**SPEC, "networkPolicy": {"enabled": False}})
    assert not [d for d in builders.desired_objects(off) if d.kind == "NetworkPolicy"]
    assert (kube.NETWORKPOLICIES, "wharf") in builders.unwanted(off)
    # Unset: the operator's default decides; the spec wins over it.
    assert not [d for d in builders.desired_objects(_policy_inputs(SPEC, default=False)) if d.kind == "NetworkPolicy"]
    on = _policy_inputs({**SPEC, "networkPolicy": {"enabled": True}}, default=False)
    assert [d.name for d in builders.desired_objects(on) if d.kind == "NetworkPolicy"] == ["wharf"]


def test_an_operator_that_does_not_know_where_it_runs_names_the_brokers_namespace():
    assert resources.operator_peer(None, {}) == {"podSelector": {}}
    assert resources.operator_peer(None, {"a": "b"}) == {"podSelector": {"matchLabels": {"a": "b"}}}
    assert resources.operator_peer("ops", {}) == {
        "podSelector": {}, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}


def test_a_deployed_nats_takes_clients_from_the_brokers_and_routes_from_itself():
    deployed = _policy_inputs({**SPEC, "cluster": {"nats": {"deploy": True}}})
    objects = _by_key(builders.desired_objects(deployed))
    policy = objects["NetworkPolicy/wharf-nats"]
    nats_pods = objects["StatefulSet/wharf-nats"]["spec"]["selector"]
    assert policy["spec"]["podSelector"] == nats_pods
    assert _port_rules(policy) == {
        4222: [{"podSelector": objects["StatefulSet/wharf"]["spec"]["selector"]}],
        6222: [{"podSelector": nats_pods}]}
    assert (kube.NETWORKPOLICIES, "wharf-nats") not in builders.unwanted(deployed)
    # Without NATS deployed, or with the policies off, a NATS policy the broker owned before goes.
    assert (kube.NETWORKPOLICIES, "wharf-nats") in builders.unwanted(_policy_inputs(SPEC))
    off = _policy_inputs({**SPEC, "cluster": {"nats": {"deploy": True}}, "networkPolicy": {"enabled": False}})
    assert {(kube.NETWORKPOLICIES, "wharf"), (kube.NETWORKPOLICIES, "wharf-nats")} <= set(builders.unwanted(off))


def _observed(**fields) -> st.Observed:
    base = {"generation": 3, "replicas": 2, "selector": "s", "ready_replicas": 2, "listener_names": {"mqtts"},
            "reconciled": True, "config": (True, "Applied", "ok")}
    return st.Observed(**{**base, **fields})


def _conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_every_condition_carries_the_observed_generation_and_a_standalone_broker_has_no_clustered():
    current = {"conditions": [{"type": "Clustered", "status": "False", "reason": "Standalone", "message": ""}]}
    status = st.compose(current, _observed(listener_records={"mqtts": {"fingerprint": "ab"}}))
    conditions = _conditions(status)
    assert set(conditions) == {"ConfigApplied", "CertificatesReady", "Ready", "Reconciling", "Stalled"}
    assert all(c["observedGeneration"] == 3 for c in conditions.values())
    assert status["observedGeneration"] == 3 and status["cluster"] is None
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False" and conditions["Stalled"]["status"] == "False"


def test_invalid_config_is_stalled_at_its_generation():
    status = st.compose({}, _observed(config=(False, "InvalidConfig", "listener mqtts: bad")))
    conditions = _conditions(status)
    assert status["observedGeneration"] == 3
    assert conditions["ConfigApplied"]["observedGeneration"] == 3
    assert conditions["Stalled"]["status"] == "True" and conditions["Stalled"]["reason"] == "InvalidConfig"
    assert conditions["Reconciling"]["status"] == "False"
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "InvalidConfig"


def test_a_secret_the_kubelet_has_not_projected_yet_is_waiting_not_refused():
    waiting = {"mqtts": {"fingerprint": "ab", "lastError": "wharf-0: did not reach the pod's files in time",
                         "reason": st.WAITING_FOR_KUBELET}}
    conditions = _conditions(st.compose({}, _observed(listener_records=waiting)))
    assert conditions["CertificatesReady"]["reason"] == "WaitingForKubelet"
    assert conditions["Ready"]["reason"] == "WaitingForKubelet"
    assert conditions["Reconciling"]["status"] == "True" and conditions["Reconciling"]["reason"] == "WaitingForKubelet"
    assert conditions["Stalled"]["status"] == "False"

    refused = {"mqtts": {"lastError": "KeyMismatch: no", "reason": st.REFUSED}}
    conditions = _conditions(st.compose({}, _observed(listener_records=refused)))
    assert conditions["CertificatesReady"]["reason"] == "Refused"
    assert conditions["Stalled"]["status"] == "True" and conditions["Stalled"]["reason"] == "CertificateRefused"


def test_a_rolling_update_and_missing_pods_are_reconciling():
    conditions = _conditions(st.compose({}, _observed(rolling=True, ready_replicas=1)))
    assert conditions["Ready"]["reason"] == "RollingUpdate"
    assert conditions["Reconciling"]["reason"] == "RollingUpdate"
    conditions = _conditions(st.compose({}, _observed(ready_replicas=1)))
    assert conditions["Ready"]["reason"] == "WaitingForPods" and conditions["Reconciling"]["status"] == "True"


def test_a_pass_that_did_not_reconcile_keeps_observed_generation_and_config():
    current = st.compose({}, _observed())
    newer = st.compose(current, _observed(generation=4, reconciled=False, config=None))
    assert "observedGeneration" not in newer
    conditions = _conditions(newer)
    assert conditions["ConfigApplied"]["observedGeneration"] == 3  # not recomputed: its own generation stays
    assert conditions["Reconciling"]["status"] == "True" and conditions["Reconciling"]["reason"] == "NewGeneration"
