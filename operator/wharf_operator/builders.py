"""What an MQTTBroker should own, as one list of pure builders: MQTTBroker (defaulted spec, rendered config, the
operator's default broker image) → the objects, each with its API resource and owner reference.

The controller applies what they return in one place (server-side apply, ``Controller._apply_all``) and deletes
what ``unwanted`` names; nothing else in the operator decides what exists. A builder returns no object when the
spec does not ask for it (the Certificate without ``spec.certificate``, the NATS objects without
``spec.cluster.nats.deploy``, the NetworkPolicies with ``spec.networkPolicy.enabled`` false), and then ``unwanted``
lists it so that one the broker owned before is removed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import nats, resources
from .crd import GROUP, VERSION
from .kube import (
    CERTIFICATES,
    CONFIGMAPS,
    NETWORKPOLICIES,
    PDBS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
    STATEFULSETS,
    Resource,
)


@dataclass(frozen=True)
class Inputs:
    """Everything the builders read: the broker's identity, its defaulted spec, the rendered config and the
    operator's default broker image (for a spec without ``image``)."""

    name: str
    namespace: str
    uid: str | None
    spec: dict
    hocon: str
    live_options_hash: str
    restart_hash: str
    default_image: str = resources.DEFAULT_BROKER_IMAGE
    # The NetworkPolicies when spec.networkPolicy.enabled is unset (the operator's --network-policy), and the peer
    # its admin-port rule lets in: the operator's own pods (resources.operator_peer).
    network_policy_default: bool = True
    operator_peer: dict = field(default_factory=lambda: resources.operator_peer(None, {}))


@dataclass(frozen=True)
class Desired:
    resource: Resource
    kind: str  # the object's kind, as metrics and events name it
    body: dict
    # Created once, never rewritten (the admin token: pods and operator must keep reading the same one).
    create_only: bool = False

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]


def owner_reference(inputs: Inputs) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "name": inputs.name, "uid": inputs.uid,
            "controller": True, "blockOwnerDeletion": True}


def _nats_wanted(spec: dict) -> bool:
    return bool(((spec.get("cluster") or {}).get("nats") or {}).get("deploy", False))


def _broker_objects(i: Inputs) -> Iterable[Desired]:
    yield Desired(SECRETS, "Secret", resources.admin_token_secret(i.name, i.namespace), create_only=True)
    yield Desired(SERVICEACCOUNTS, "ServiceAccount", resources.service_account(i.name, i.namespace))
    yield Desired(CONFIGMAPS, "ConfigMap", resources.config_map(i.name, i.namespace, i.hocon, i.live_options_hash))
    yield Desired(SERVICES, "Service", resources.headless_service(i.name, i.namespace, i.spec))
    yield Desired(SERVICES, "Service", resources.client_service(i.name, i.namespace, i.spec))
    yield Desired(PDBS, "PodDisruptionBudget", resources.pod_disruption_budget(i.name, i.namespace, i.spec))
    yield Desired(STATEFULSETS, "StatefulSet",
                  resources.stateful_set(i.name, i.namespace, i.spec, i.restart_hash, i.default_image))


def _network_policy_wanted(i: Inputs) -> bool:
    return resources.network_policy_enabled(i.spec, i.network_policy_default)


def _network_policies(i: Inputs) -> Iterable[Desired]:
    if not _network_policy_wanted(i):
        return
    yield Desired(NETWORKPOLICIES, "NetworkPolicy", resources.network_policy(i.name, i.namespace, i.spec,
                                                                            i.operator_peer))
    if _nats_wanted(i.spec):
        yield Desired(NETWORKPOLICIES, "NetworkPolicy",
                      nats.network_policy(i.name, i.namespace, resources.selector_labels(i.name)))


def _certificate(i: Inputs) -> Iterable[Desired]:
    certificate = resources.certificate(i.name, i.namespace, i.spec)
    if certificate is not None:
        yield Desired(CERTIFICATES, "Certificate", certificate)


def _nats_objects(i: Inputs) -> Iterable[Desired]:
    if not _nats_wanted(i.spec):
        return
    yield Desired(CONFIGMAPS, "ConfigMap", nats.config_map(i.name, i.namespace, i.spec))
    yield Desired(SERVICES, "Service", nats.headless_service(i.name, i.namespace))
    yield Desired(SERVICES, "Service", nats.client_service(i.name, i.namespace))
    yield Desired(PDBS, "PodDisruptionBudget", nats.pod_disruption_budget(i.name, i.namespace))
    yield Desired(STATEFULSETS, "StatefulSet", nats.stateful_set(i.name, i.namespace, i.spec))


# The one list: what an MQTTBroker owns is what these return, in this order (the NetworkPolicies first, so that no
# pod ever runs with its admin port open; the StatefulSet after what its pods mount, so that new pods find their
# ConfigMap and ServiceAccount).
BUILDERS: list[Callable[[Inputs], Iterable[Desired]]] = [_network_policies, _broker_objects, _certificate,
                                                         _nats_objects]


def desired_objects(inputs: Inputs) -> list[Desired]:
    """Every object the broker should own, each carrying the broker's controller owner reference."""
    owner = owner_reference(inputs)
    result = []
    for builder in BUILDERS:
        for desired in builder(inputs):
            body = copy.deepcopy(desired.body)
            body["metadata"]["ownerReferences"] = [owner]
            result.append(Desired(desired.resource, desired.kind, body, desired.create_only))
    return result


def unwanted(inputs: Inputs) -> list[tuple[Resource, str]]:
    """Objects the broker may have owned under an earlier spec and must not own under this one. (The Certificate
    is not among them: its Secret holds the keys the pods serve, and cert-manager keeps it; removing
    spec.certificate leaves both, as the docs say.)"""
    name = inputs.name
    result: list[tuple[Resource, str]] = []
    if not _nats_wanted(inputs.spec):
        result += [(CONFIGMAPS, nats.config_map_name(name)), (SERVICES, nats.headless_service_name(name)),
                   (SERVICES, nats.name(name)), (PDBS, nats.name(name)), (STATEFULSETS, nats.name(name))]
    if not _network_policy_wanted(inputs):
        result.append((NETWORKPOLICIES, resources.network_policy_name(name)))
    if not _network_policy_wanted(inputs) or not _nats_wanted(inputs.spec):
        result.append((NETWORKPOLICIES, nats.name(name)))
    return result
