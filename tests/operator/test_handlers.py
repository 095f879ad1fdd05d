"""The kopf wiring's filters: which Secret and ConfigMap events reach the operator at all (the API server's field
selector) and which of those run its handlers (references and ownership, read from metadata only)."""

from __future__ import annotations

import kopf
from wharf_operator import handlers

SECRETS = kopf.Resource("", "v1", "secrets", kind="Secret", namespaced=True)
OWNER = {"apiVersion": "mqtt.wharf.dev/v1alpha1", "kind": "MQTTBroker", "name": "wharf", "uid": "u",
         "controller": True}


def test_helm_release_secrets_are_left_out_of_the_secret_watch_only():
    settings = kopf.OperatorSettings()
    handlers.configure_settings(settings)
    assert settings.watching.field_selectors.collect(SECRETS) == ["type!=helm.sh/release.v1"]
    for plural, kind in (("configmaps", "ConfigMap"), ("services", "Service"), ("serviceaccounts", "ServiceAccount")):
        other = kopf.Resource("", "v1", plural, kind=kind, namespaced=True)
        assert settings.watching.field_selectors.collect(other) == []
    mqttbrokers = kopf.Resource("mqtt.wharf.dev", "v1alpha1", "mqttbrokers", kind="MQTTBroker", namespaced=True)
    assert settings.watching.field_selectors.collect(mqttbrokers) == []


class _NoData(dict):
    """An object whose data must not be read."""

    def __getitem__(self, key):
        if key in ("data", "stringData", "binaryData"):
            raise AssertionError(f"{key} was read")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in ("data", "stringData", "binaryData"):
            raise AssertionError(f"{key} was read")
        return super().get(key, default)


def _event(name: str, type_: str | None = "MODIFIED", owners: list | None = None) -> dict:
    meta = {"name": name, "namespace": "ns", **({"ownerReferences": owners} if owners else {})}
    return {"type": type_, "object": _NoData(metadata=meta, data={"tls.crt": "x"})}


def test_only_referenced_or_owned_objects_concern_a_broker_and_their_data_is_never_read():
    index = {("Secret", "ns", "wharf-tls"): ["wharf"], ("ConfigMap", "ns", "client-ca"): ["wharf"]}
    assert handlers.concerns_a_broker("Secret", _event("wharf-tls"), index)
    assert handlers.concerns_a_broker("ConfigMap", _event("client-ca", "DELETED"), index)
    assert handlers.concerns_a_broker("Secret", _event("wharf-admin-token", owners=[OWNER]), index)
    # Another broker's object, an unreferenced one, one of the same name in another kind, the initial listing.
    assert not handlers.concerns_a_broker("Secret", _event("app-db-password"), index)
    assert not handlers.concerns_a_broker("Secret", _event("client-ca"), index)
    assert not handlers.concerns_a_broker("Secret", _event("wharf-tls", type_=None), index)
    foreign = {**OWNER, "apiVersion": "example.com/v1"}
    assert not handlers.concerns_a_broker("Secret", _event("x", owners=[foreign]), index)
    assert not handlers.concerns_a_broker("Secret", _event("x", owners=[{**OWNER, "controller": False}]), index)
