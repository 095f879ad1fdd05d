"""Builders of the objects an MQTTBroker owns: ServiceAccount, ConfigMap, Services, PDB, StatefulSet, admin-token
Secret, NetworkPolicy and (optionally) a cert-manager Certificate. Pure functions of the (defaulted) spec and, for
the broker image when ``spec.image`` is unset, the operator's default (``--broker-image``).

The pod template carries a hash of the config parts that need new pods (``render.restart_hash``) and nothing
derived from certificate contents: rotating a certificate must never restart a broker.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from . import __version__, layout
from .crd import ADMIN_PORT, GROUP, METRICS_PORT

CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
LIVE_OPTIONS_ANNOTATION = f"{GROUP}/live-options-hash"
BROKER_UID = 10001  # the image's non-root user
# The broker image of an MQTTBroker without spec.image when the operator is given none (--broker-image,
# $WHARF_BROKER_IMAGE): the image of this operator's own version, which carries the broker too.
DEFAULT_BROKER_IMAGE = f"wharf:{__version__}"


def selector_labels(name: str) -> dict[str, str]:
    # The component keeps a broker named like the Helm release (same name and instance labels) from selecting
    # the operator's own pod.
    return {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "broker"}


def labels(name: str) -> dict[str, str]:
    return {**selector_labels(name), "app.kubernetes.io/managed-by": "wharf-operator"}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def config_map_name(name: str) -> str:
    return f"{name}-config"


def headless_service_name(name: str) -> str:
    return f"{name}-headless"


def admin_token_secret_name(name: str) -> str:
    return f"{name}-admin-token"


def _meta(name: str, namespace: str, broker: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(broker), **extra}


def _bundle_volume(ref: dict[str, Any], volume: str) -> dict[str, Any]:
    """A whole-object volume for a PEM bundle reference (``caRef``, ``trustedIssuerCARef``)."""
    if ref.get("kind", "Secret") == "ConfigMap":
        return {"name": volume, "configMap": {"name": ref["name"], "defaultMode": 0o444}}
    return {"name": volume, "secret": {"secretName": ref["name"], "defaultMode": 0o440}}


def service_account(broker: str, namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(broker, namespace, broker),
            # The brokers never call the Kubernetes API.
            "automountServiceAccountToken": False}


def config_map(broker: str, namespace: str, hocon: str, live_options_hash: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(config_map_name(broker), namespace, broker,
                              annotations={LIVE_OPTIONS_ANNOTATION: live_options_hash}),
            "data": {layout.CONFIG_KEY: hocon}}


def admin_token_secret(broker: str, namespace: str) -> dict:
    """Created once with a random token; never rewritten (pods and operator read the same one)."""
    token = secrets.token_urlsafe(32)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(admin_token_secret_name(broker), namespace, broker),
            "data": {layout.ADMIN_TOKEN_KEY: base64.b64encode(token.encode()).decode()}}


def _listener_ports(spec: dict) -> list[dict]:
    return [{"name": l["name"], "port": l["port"], "targetPort": l["name"], "protocol": "TCP"}
            for l in spec["listeners"]]


def client_service(broker: str, namespace: str, spec: dict) -> dict:
    service = spec.get("service") or {}
    metadata = _meta(broker, namespace, broker)
    metadata["labels"] = {**(service.get("labels") or {}), **metadata["labels"]}
    if service.get("annotations"):
        metadata["annotations"] = dict(service["annotations"])
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": {"type": service.get("type", "ClusterIP"), "selector": selector_labels(broker),
                     "ports": _listener_ports(spec)}}


def headless_service(broker: str, namespace: str, spec: dict) -> dict:
    ports = _listener_ports(spec) + [
        {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"},
        # Read-only, no credential: what a Prometheus (the chart's broker PodMonitor) scrapes.
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(headless_service_name(broker), namespace, broker),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": selector_labels(broker), "ports": ports}}


def network_policy_name(name: str) -> str:
    return name


def operator_peer(namespace: str | None, pod_labels: dict[str, str]) -> dict[str, Any]:
    """The NetworkPolicy peer of the operator's pods: its pod labels in its namespace (``kubernetes.io/metadata.name``,
    which the API server sets on every namespace). Unknown namespace: the broker's own; no labels: every pod there."""
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(pod_labels)} if pod_labels else {}}
    if namespace:
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return peer


def network_policy_enabled(spec: dict, default: bool) -> bool:
    """``spec.networkPolicy.enabled`` when set, else the operator's default (``--network-policy``)."""
    enabled = (spec.get("networkPolicy") or {}).get("enabled")
    return default if enabled is None else bool(enabled)


def network_policy(broker: str, namespace: str, spec: dict, admin_peer: dict[str, Any]) -> dict:
    """Ingress of the broker pods: the MQTT listeners' ports from anywhere, the read-only metrics port from anywhere
    (or ``spec.networkPolicy.metricsFrom``), the admin API only from the operator's pods (``admin_peer``); nothing
    else. Egress is not restricted (the brokers reach NATS, HTTP authentication and DNS)."""
    wanted = spec.get("networkPolicy") or {}
    metrics_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": METRICS_PORT}]}
    if wanted.get("metricsFrom"):
        metrics_rule["from"] = [dict(peer) for peer in wanted["metricsFrom"]]
    ingress = [
        {"ports": [{"protocol": "TCP", "port": listener["port"]} for listener in spec["listeners"]]},
        metrics_rule,
        {"from": [admin_peer], "ports": [{"protocol": "TCP", "port": ADMIN_PORT}]},
    ]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(network_policy_name(broker), namespace, broker),
            "spec": {"podSelector": {"matchLabels": selector_labels(broker)}, "policyTypes": ["Ingress"],
                     "ingress": ingress}}


def pod_disruption_budget(broker: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(broker, namespace, broker),
            "spec": {"maxUnavailable": (spec.get("podDisruptionBudget") or {}).get("maxUnavailable", 1),
                     "selector": {"matchLabels": selector_labels(broker)}}}


def _volumes(spec: dict) -> tuple[list[dict], list[dict]]:
    volumes: list[dict] = [
        {"name": "config", "configMap": {"name": "", "defaultMode": 0o444}},
        {"name": "admin-token", "secret": {"secretName": "", "defaultMode": 0o440}},
    ]
    mounts: list[dict] = [
        {"name": "config", "mountPath": layout.config_dir(), "readOnly": True},
        {"name": "admin-token", "mountPath": layout.admin_token_dir(), "readOnly": True},
    ]
    for listener in spec["listeners"]:
        tls = listener.get("tls")
        if not tls:
            continue
        name = listener["name"]
        # Whole-Secret volumes, never subPath: the kubelet's atomic update must reach the files.
        cert_volume = layout.volume_name("tls", name)
        volumes.append({"name": cert_volume, "secret": {"secretName": tls["secretName"], "defaultMode": 0o440}})
        mounts.append({"name": cert_volume, "mountPath": layout.cert_dir(name), "readOnly": True})
        for key, kind, directory in (("caRef", "ca", layout.ca_dir(name)),
                                     ("trustedIssuerCARef", "issuerca", layout.issuer_ca_dir(name))):
            if key in tls:
                volume = _bundle_volume(tls[key], layout.volume_name(kind, name))
                volumes.append(volume)
                mounts.append({"name": volume["name"], "mountPath": directory, "readOnly": True})
        if "keyPasswordSecretRef" in tls:
            pw_volume = layout.volume_name("keypass", name)
            volumes.append({"name": pw_volume, "secret": {"secretName": tls["keyPasswordSecretRef"]["name"],
                                                          "defaultMode": 0o440}})
            mounts.append({"name": pw_volume, "mountPath": layout.key_password_dir(name), "readOnly": True})
    psk = spec.get("pskAuthentication") or {}
    if psk.get("enabled"):
        volumes.append({"name": "psk", "secret": {"secretName": psk["secretRef"]["name"], "defaultMode": 0o440}})
        mounts.append({"name": "psk", "mountPath": layout.psk_dir(), "readOnly": True})
    # Users and ACL: whole volumes (never subPath) so that edits reach the brokers, which reload them live.
    password_file = (spec.get("authentication") or {}).get("passwordFile")
    if password_file:
        volumes.append({"name": "users", "secret": {"secretName": password_file["secretRef"]["name"],
                                                    "defaultMode": 0o440}})
        mounts.append({"name": "users", "mountPath": layout.users_dir(), "readOnly": True})
    acl = (spec.get("authorization") or {}).get("aclRef")
    if acl:
        if acl.get("kind", "ConfigMap") == "Secret":
            volumes.append({"name": "acl", "secret": {"secretName": acl["name"], "defaultMode": 0o440}})
        else:
            volumes.append({"name": "acl", "configMap": {"name": acl["name"], "defaultMode": 0o444}})
        mounts.append({"name": "acl", "mountPath": layout.acl_dir(), "readOnly": True})
    nats = (spec.get("cluster") or {}).get("nats") or {}
    if nats.get("tls"):
        volumes.append({"name": "nats-tls", "secret": {"secretName": nats["tls"]["clientSecretName"],
                                                       "defaultMode": 0o440}})
        mounts.append({"name": "nats-tls", "mountPath": layout.nats_tls_dir(), "readOnly": True})
    if nats.get("credentialsSecretRef"):
        volumes.append({"name": "nats-creds", "secret": {"secretName": nats["credentialsSecretRef"]["name"],
                                                         "defaultMode": 0o440}})
        mounts.append({"name": "nats-creds", "mountPath": layout.nats_credentials_dir(), "readOnly": True})
    return volumes, mounts


def broker_image(spec: dict, default_image: str = DEFAULT_BROKER_IMAGE) -> str:
    """The image the broker pods run: ``spec.image`` when set, else the operator's default. Not stored in the
    MQTTBroker: a new operator default moves every broker without one by a rolling update of its StatefulSet."""
    return spec.get("image") or default_image


def stateful_set(broker: str, namespace: str, spec: dict, config_hash: str,
                 default_image: str = DEFAULT_BROKER_IMAGE) -> dict:
    volumes, mounts = _volumes(spec)
    volumes[0]["configMap"]["name"] = config_map_name(broker)
    volumes[1]["secret"]["secretName"] = admin_token_secret_name(broker)
    ports = [{"name": l["name"], "containerPort": l["port"], "protocol": "TCP"} for l in spec["listeners"]]
    ports.append({"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"})
    ports.append({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "broker",
        "image": broker_image(spec, default_image),
        "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
        "command": ["wharf-broker"],
        "args": ["--config", layout.config_file()],
        "ports": ports,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            # The cluster member name (render.NODE_NAME_ENV); the kubelet expands $(POD_NAME).
            {"name": "WHARF_NODE_NAME", "value": "wharf@$(POD_NAME)"},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10,
                          "failureThreshold": 6},
        "volumeMounts": mounts,
        "securityContext": spec.get("securityContext") or {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}},
    }
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": broker,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds", 30),
        "securityContext": spec.get("podSecurityContext") or {
            "runAsNonRoot": True, "runAsUser": BROKER_UID, "runAsGroup": BROKER_UID, "fsGroup": BROKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    for key in ("affinity", "tolerations", "nodeSelector", "priorityClassName", "imagePullSecrets"):
        if spec.get(key):
            pod_spec[key] = spec[key]
    pod_labels = {**(spec.get("podLabels") or {}), **labels(broker)}
    pod_annotations = {**(spec.get("podAnnotations") or {}), CONFIG_HASH_ANNOTATION: config_hash}
    stateful = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(broker, namespace, broker),
        "spec": {
            "replicas": spec["replicas"],
            "serviceName": headless_service_name(broker),
            "selector": {"matchLabels": selector_labels(broker)},
            # Config changes that need new pods roll them one at a time, each waiting for the previous to be ready.
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}, "spec": pod_spec},
        },
    }
    durable = spec.get("durableStorage") or {}
    if durable.get("enabled"):
        # One volume per broker pod, kept when the pod moves or restarts (and when the StatefulSet scales down).
        mounts.append({"name": layout.DATA_VOLUME, "mountPath": layout.data_dir()})
        claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": durable.get("size", "1Gi")}}}
        if durable.get("storageClassName"):
            claim["storageClassName"] = durable["storageClassName"]
        stateful["spec"]["volumeClaimTemplates"] = [
            {"metadata": {"name": layout.DATA_VOLUME, "labels": selector_labels(broker)}, "spec": claim}]
    return stateful


def certificate(broker: str, namespace: str, spec: dict) -> dict | None:
    """A cert-manager Certificate for the Services' DNS names, when spec.certificate asks for one."""
    wanted = spec.get("certificate")
    if not wanted:
        return None
    headless = headless_service_name(broker)
    dns_names = [broker, f"{broker}.{namespace}", f"{broker}.{namespace}.svc",
                 f"{broker}.{namespace}.svc.cluster.local",
                 f"*.{headless}.{namespace}.svc", f"*.{headless}.{namespace}.svc.cluster.local"]
    for extra in wanted.get("dnsNames") or []:
        if extra not in dns_names:
            dns_names.append(extra)
    issuer = wanted["issuerRef"]
    cert_spec: dict[str, Any] = {
        "secretName": wanted["secretName"],
        "dnsNames": dns_names,
        "issuerRef": {"name": issuer["name"], "kind": issuer.get("kind", "Issuer"),
                      "group": issuer.get("group", "cert-manager.io")},
        "usages": ["server auth", "digital signature", "key encipherment"],
        "privateKey": {"rotationPolicy": "Always"},
    }
    for key in ("duration", "renewBefore"):
        if wanted.get(key):
            cert_spec[key] = wanted[key]
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": _meta(broker, namespace, broker),
            "spec": cert_spec}


def is_subset(desired: Any, actual: Any) -> bool:
    """True when everything in ``desired`` is already in ``actual`` (which may hold server defaults)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(desired) == len(actual) and \
            all(is_subset(d, a) for d, a in zip(desired, actual))
    return desired == actual
