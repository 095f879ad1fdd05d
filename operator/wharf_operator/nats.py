"""Builders of the NATS cluster an MQTTBroker owns when ``spec.cluster.nats.deploy`` is true.

Three ``nats-server`` pods with JetStream in a StatefulSet (routes between them through the headless Service,
JetStream on a persistent volume per pod), their config in a ConfigMap, a client and a headless Service, a
PodDisruptionBudget that keeps a JetStream quorum (two of three) and, with the brokers' NetworkPolicy, one of
their own. Pure functions of the (defaulted) spec.

NATS pods carry ``app.kubernetes.io/name: wharf-nats``, not the brokers' ``wharf``: the brokers' selectors
(Services, StatefulSet, the pods the operator signals) must never match them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .crd import GROUP

SERVERS = 3
CLIENT_PORT = 4222
ROUTE_PORT = 6222
MONITOR_PORT = 8222
CONFIG_KEY = "nats.conf"
CONFIG_DIR = "/etc/nats"
TLS_DIR = "/etc/nats/tls"
DATA_DIR = "/data"
NATS_UID = 1000
CONFIG_HASH_ANNOTATION = f"{GROUP}/nats-config-hash"


def name(broker: str) -> str:
    """StatefulSet, client Service and PodDisruptionBudget of the NATS cluster."""
    return f"{broker}-nats"


def headless_service_name(broker: str) -> str:
    return f"{broker}-nats-headless"


def config_map_name(broker: str) -> str:
    return f"{broker}-nats-config"


def selector_labels(broker: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "wharf-nats", "app.kubernetes.io/instance": broker}


def labels(broker: str) -> dict[str, str]:
    return {**selector_labels(broker), "app.kubernetes.io/component": "nats",
            "app.kubernetes.io/managed-by": "wharf-operator"}


def pod_host(broker: str, namespace: str, index: int) -> str:
    return f"{name(broker)}-{index}.{headless_service_name(broker)}.{namespace}.svc"


def client_urls(broker: str, namespace: str, tls: bool) -> list[str]:
    """What the brokers connect to: every NATS pod by its stable name (a pod that is down is skipped)."""
    scheme = "tls" if tls else "nats"
    return [f"{scheme}://{pod_host(broker, namespace, i)}:{CLIENT_PORT}" for i in range(SERVERS)]


def _meta(obj_name: str, namespace: str, broker: str) -> dict[str, Any]:
    return {"name": obj_name, "namespace": namespace, "labels": labels(broker)}


def server_config(broker: str, namespace: str, spec: dict, *, tls_dir: str = TLS_DIR,
                  data_dir: str = DATA_DIR) -> str:
    """nats.conf: JetStream on the pod's volume, routes to the three pods, TLS for clients when asked.

    ``$POD_NAME`` is resolved by nats-server from the environment, so all pods share one file. Tests pass
    other directories holding real files.
    """
    nats = spec["cluster"]["nats"]
    routes = ", ".join(f'"nats://{pod_host(broker, namespace, i)}:{ROUTE_PORT}"' for i in range(SERVERS))
    lines = [
        "# Rendered by wharf-operator from the MQTTBroker; changes here are overwritten.",
        "server_name: $POD_NAME",
        f"listen: 0.0.0.0:{CLIENT_PORT}",
        f"http: 0.0.0.0:{MONITOR_PORT}",
        "jetstream {",
        f'  store_dir: "{data_dir}/jetstream"',
        "}",
        "cluster {",
        f'  name: "{name(broker)}"',
        f"  listen: 0.0.0.0:{ROUTE_PORT}",
        f"  routes: [{routes}]",
        "}",
    ]
    if nats.get("tls"):
        # Brokers must present a certificate the Secret's CA signed (mutual TLS).
        lines += [
            "tls {",
            f'  cert_file: "{tls_dir}/tls.crt"',
            f'  key_file: "{tls_dir}/tls.key"',
            f'  ca_file: "{tls_dir}/ca.crt"',
            "  verify: true",
            "}",
        ]
    return "\n".join(lines) + "\n"


def config_map(broker: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(config_map_name(broker), namespace, broker),
            "data": {CONFIG_KEY: server_config(broker, namespace, spec)}}


def client_service(broker: str, namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name(broker), namespace, broker),
            "spec": {"type": "ClusterIP", "selector": selector_labels(broker),
                     "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"}]}}


def headless_service(broker: str, namespace: str) -> dict:
    ports = [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
             for port_name, port in (("client", CLIENT_PORT), ("route", ROUTE_PORT), ("monitor", MONITOR_PORT))]
    # Routes must resolve before the pods are ready: the cluster forms only once they reach each other.
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(headless_service_name(broker), namespace, broker),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector_labels(broker),
                     "ports": ports}}


def network_policy(broker: str, namespace: str, broker_selector: dict[str, str]) -> dict:
    """Ingress of the NATS pods: the client port from the MQTTBroker's broker pods (``broker_selector``), the route
    port from the other NATS pods; the monitoring port from no pod (the kubelet's probes come from the pod's node,
    which a NetworkPolicy always admits)."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(name(broker), namespace, broker),
            "spec": {"podSelector": {"matchLabels": selector_labels(broker)}, "policyTypes": ["Ingress"],
                     "ingress": [
                         {"from": [{"podSelector": {"matchLabels": dict(broker_selector)}}],
                          "ports": [{"protocol": "TCP", "port": CLIENT_PORT}]},
                         {"from": [{"podSelector": {"matchLabels": selector_labels(broker)}}],
                          "ports": [{"protocol": "TCP", "port": ROUTE_PORT}]}]}}


def pod_disruption_budget(broker: str, namespace: str) -> dict:
    # Two of three keep the JetStream quorum: one voluntary disruption at a time.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name(broker), namespace, broker),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(broker)}}}


def stateful_set(broker: str, namespace: str, spec: dict) -> dict:
    nats = spec["cluster"]["nats"]
    storage = nats.get("storage") or {}
    config_hash = hashlib.sha256(server_config(broker, namespace, spec).encode()).hexdigest()[:16]
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "data", "mountPath": DATA_DIR}]
    volumes: list[dict] = [{"name": "config", "configMap": {"name": config_map_name(broker), "defaultMode": 0o444}}]
    if nats.get("tls"):
        # A whole-Secret volume (never subPath), so a renewed certificate reaches the files.
        volumes.append({"name": "tls", "secret": {"secretName": nats["tls"]["serverSecretName"],
                                                  "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    probe = {"httpGet": {"path": "/healthz?js-enabled-only=true", "port": "monitor"}, "periodSeconds": 10}
    container: dict[str, Any] = {
        "name": "nats",
        "image": nats["image"],
        "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
        "command": ["nats-server", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [{"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
                  {"name": "route", "containerPort": ROUTE_PORT, "protocol": "TCP"},
                  {"name": "monitor", "containerPort": MONITOR_PORT, "protocol": "TCP"}],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6, "initialDelaySeconds": 10},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if nats.get("resources"):
        container["resources"] = nats["resources"]
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                  "resources": {"requests": {"storage": storage.get("size", "1Gi")}}}
    if storage.get("storageClassName"):
        claim_spec["storageClassName"] = storage["storageClassName"]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"runAsNonRoot": True, "runAsUser": NATS_UID, "runAsGroup": NATS_UID,
                            "fsGroup": NATS_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    for key in ("imagePullSecrets",):
        if spec.get(key):
            pod_spec[key] = spec[key]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name(broker), namespace, broker),
        "spec": {
            "replicas": SERVERS,
            "serviceName": headless_service_name(broker),
            "selector": {"matchLabels": selector_labels(broker)},
            # All three start together: the JetStream cluster forms only when they see each other.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": labels(broker),
                                      "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
                         "spec": pod_spec},
            "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": labels(broker)}, "spec": claim_spec}],
        },
    }
