"""spec.durableStorage: the rendered broker config turns durable_storage on in the pod's volume, the StatefulSet
gets a volumeClaimTemplate per broker pod, and a cluster refuses it."""

from __future__ import annotations

import pytest
from wharf_broker.config.loader import load_string
from wharf_operator import layout, render, resources
from wharf_operator.crd import defaulted_spec, spec_schema
from wharf_operator.render import RenderError


def _spec(**extra) -> dict:
    return defaulted_spec({"replicas": 1, **extra})


def test_off_by_default_renders_nothing_and_claims_nothing():
    spec = _spec()
    assert spec["durableStorage"] == {"enabled": False, "size": "1Gi", "synchronous": "full"}
    assert "durable_storage" not in render.config_tree(spec)
    assert "volumeClaimTemplates" not in resources.stateful_set("b", "ns", spec, "h")["spec"]


def test_on_renders_the_data_dir_on_a_claim_per_pod(tmp_path):
    spec = _spec(durableStorage={"enabled": True, "size": "5Gi", "storageClassName": "fast-ssd",
                                 "synchronous": "normal"})
    token = tmp_path / "admin" / "token"  # the rendered config names the mounted admin token
    token.parent.mkdir()
    token.write_text("t")
    text = render.render(spec, str(tmp_path))
    config = load_string(text)  # the broker accepts what the operator renders
    assert config.durable_storage.enable is True
    assert config.durable_storage.data_dir == layout.data_dir()
    assert config.durable_storage.synchronous == "normal"
    sts = resources.stateful_set("b", "ns", spec, "h")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == layout.DATA_VOLUME
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                             "storageClassName": "fast-ssd"}
    mounts = sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": layout.DATA_VOLUME, "mountPath": layout.data_dir()} in mounts
    # The pod's fsGroup makes the volume writable by the non-root broker.
    assert sts["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == resources.BROKER_UID


def test_a_cluster_refuses_durable_storage_and_spec_config_cannot_bypass_the_volume():
    with pytest.raises(RenderError, match="standalone brokers"):
        render.config_tree(_spec(durableStorage={"enabled": True},
                                 cluster={"nats": {"servers": ["nats://nats:4222"]}}))
    with pytest.raises(RenderError, match="spec.config.durable_storage is managed by the operator"):
        render.config_tree(_spec(config={"durable_storage": {"enable": True}}))
    rules = [rule["rule"] for rule in spec_schema()["x-kubernetes-validations"]]
    assert any("durableStorage" in rule and "cluster" in rule for rule in rules)
