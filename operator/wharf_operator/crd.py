"""The MQTTBroker CustomResourceDefinition, built here and written to ``manifests/crds/``.

This module is the single source of the CRD: ``python -m wharf_operator.crd > manifests/crds/mqttbrokers.mqtt.wharf.dev.yaml``
regenerates the manifest, and a test fails when the two drift apart. The operator also applies the schema's
defaults itself (``apply_defaults``), so it behaves the same whether or not the API server defaulted the object
(emulated APIs do not).
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from typing import Any

# The broker's table of ssl_options rules: the TLS fields' ranges and names here come from it, and the CEL rules
# below say the same as its rules (tests/realapi/test_mqttbroker_crd.py feeds both the same cases).
from wharf_broker.config import tls_rules

GROUP = "mqtt.wharf.dev"
VERSION = "v1alpha1"
KIND = "MQTTBroker"
PLURAL = "mqttbrokers"
SINGULAR = "mqttbroker"
SHORT_NAMES = ["mqb"]
CRD_NAME = f"{PLURAL}.{GROUP}"

# The schema's revision: bump it with every change of crd_manifest()'s spec (tests/operator/test_crd.py records the
# digest of each revision and fails until it is bumped). The operator upgrades an installed CRD of a lower revision
# and never touches one of a higher revision (an older operator must not take fields away from a newer schema).
SCHEMA_REVISION = 3
REVISION_ANNOTATION = f"{GROUP}/schema-revision"
DIGEST_ANNOTATION = f"{GROUP}/schema-digest"

# Annotation that stops reconciliation of one MQTTBroker while it is "true".
PAUSE_ANNOTATION = f"{GROUP}/pause-reconciliation"
# Set to the SHA-256 (hex) of a client-CA bundle (caRef) to signal it even though connected clients would no longer
# verify against it (docs/mqttbroker.md, "Client-CA rotation"); a later bundle is checked again.
FORCE_CLIENT_CA_ANNOTATION = f"{GROUP}/force-client-ca"

# The broker's admin API port inside every pod; listeners may not use it.
ADMIN_PORT = 18083
# The broker's read-only metrics port (prometheus {}: GET /metrics, no credential) in every pod; likewise reserved.
METRICS_PORT = 9184

DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)?$"
PEER_CERT_AS = ["disabled", "cn", "dn", "crt", "pem", "md5"]
TLS_VERSIONS = list(tls_rules.TLS_VERSIONS)
TLS13_SUITES = sorted(tls_rules.TLS13_SUITES)
# The shape of an IPv4 or IPv6 address with an optional prefix length; the operator and the broker parse it fully.
CIDR_PATTERN = (r"^(([0-9]{1,3}\.){3}[0-9]{1,3}(/([0-9]|[12][0-9]|3[0-2]))?"
                r"|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?)$")

Schema = dict[str, Any]


# --- small schema builders: every field must say what it is (kubectl explain shows it) -------------------

def _bundle_ref_fields() -> dict:
    """The fields of a reference to a PEM bundle in a Secret or ConfigMap (caRef, trustedIssuerCARef)."""
    return {
        "name": _string("Name of the Secret or ConfigMap, in the MQTTBroker's namespace.", max_length=253),
        "kind": _string("Whether the bundle is in a Secret or a ConfigMap.", default="Secret",
                        enum=["Secret", "ConfigMap"]),
        "key": _string("Key holding the PEM bundle.", default="ca.crt", max_length=253),
    }


def _string(description: str, *, default: str | None = None, enum: list[str] | None = None,
            pattern: str | None = None, max_length: int | None = None, fmt: str | None = None) -> Schema:
    schema: Schema = {"type": "string", "description": description}
    if enum is not None:
        schema["enum"] = enum
    if pattern is not None:
        schema["pattern"] = pattern
    if max_length is not None:
        schema["maxLength"] = max_length
    if fmt is not None:
        schema["format"] = fmt
    if default is not None:
        schema["default"] = default
    return schema


def _integer(description: str, *, default: int | None = None, minimum: int | None = None,
             maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    if default is not None:
        schema["default"] = default
    return schema


def _boolean(description: str, *, default: bool | None = None) -> Schema:
    schema: Schema = {"type": "boolean", "description": description}
    if default is not None:
        schema["default"] = default
    return schema


def _duration(description: str, *, default: str | None = None) -> Schema:
    return _string(description + " A duration such as 120s, 500ms, 5m or 2h.", default=default,
                   pattern=DURATION_PATTERN, max_length=32)


def _object(description: str, properties: dict[str, Schema], *, required: list[str] | None = None,
            rules: list[Schema] | None = None, default: dict | None = None) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = required
    if rules:
        schema["x-kubernetes-validations"] = rules
    if default is not None:
        schema["default"] = default
    return schema


def _array(description: str, items: Schema, *, default: list | None = None, min_items: int | None = None,
           max_items: int | None = None, map_keys: list[str] | None = None, rules: list[Schema] | None = None,
           unique: bool = False) -> Schema:
    schema: Schema = {"type": "array", "description": description, "items": items}
    if min_items is not None:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items
    if map_keys:
        schema["x-kubernetes-list-type"] = "map"
        schema["x-kubernetes-list-map-keys"] = map_keys
    elif unique:
        schema["x-kubernetes-list-type"] = "set"
    if rules:
        schema["x-kubernetes-validations"] = rules
    if default is not None:
        schema["default"] = default
    return schema


def _string_map(description: str) -> Schema:
    return {"type": "object", "description": description,
            "additionalProperties": {"type": "string"}}


def _free_object(description: str) -> Schema:
    """A Kubernetes core type (affinity, resources, ...) passed through to the pod as it is."""
    return {"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": True}


def _rule(rule: str, message: str) -> Schema:
    return {"rule": rule, "message": message}


# --- the schema ---------------------------------------------------------------------------------------

def _secret_key_ref(description: str, default_key: str) -> Schema:
    return _object(description, {
        "name": _string("Name of the Secret, in the MQTTBroker's namespace.", max_length=253),
        "key": _string("Key in the Secret.", default=default_key, max_length=253),
    }, required=["name"])


def _tls_schema() -> Schema:
    return _object(
        "TLS settings of an ssl or wss listener. Certificates are mounted as whole Secret volumes so that a "
        "renewal reaches the running brokers without a restart.",
        {
            "secretName": _string(
                "Name of a kubernetes.io/tls Secret with tls.crt (leaf and chain) and tls.key, as cert-manager "
                "writes it. When it changes, the operator validates it and tells every pod to reload.",
                max_length=253),
            "caRef": _object(
                "Trusted CA bundle for verifying client certificates (verify: verify_peer). Kept apart from the "
                "server Secret's ca.crt, so that a bundle can hold the old and the new CA during a CA rotation "
                "(for example a trust-manager Bundle written to a ConfigMap). Before a rotation, the new server "
                "certificate must chain to the Secret's ca.crt or to this bundle.",
                _bundle_ref_fields(), required=["name"]),
            "trustedIssuerCARef": _object(
                "The issuer CA(s) the served certificate must chain to, kept where the issuer does not write: "
                "set, the operator validates every new certificate against this bundle (and caRef) instead of the "
                "Secret's own ca.crt, and the brokers check their reloads against it, so a certificate from a "
                "wrong or compromised issuer is refused and never served. During a CA rotation it holds the old "
                "and the new CA (for example a trust-manager Bundle). Unset, the Secret's ca.crt is trusted.",
                _bundle_ref_fields(), required=["name"]),
            "verify": _string("verify_peer asks clients for a certificate and verifies it against caRef.",
                              default="verify_none", enum=["verify_none", "verify_peer"]),
            "failIfNoPeerCert": _boolean(
                "Refuse clients that send no certificate (mutual TLS). Needs verify: verify_peer.",
                default=False),
            "versions": _array("TLS protocol versions offered.",
                               _string("A TLS version.", enum=TLS_VERSIONS),
                               default=["tlsv1.3", "tlsv1.2"], min_items=1, max_items=4, unique=True),
            "ciphers": _array("OpenSSL names of the TLS 1.2 and TLS 1.3 cipher suites; empty means "
                              "OpenSSL's defaults.", _string("A cipher suite name.", max_length=128),
                              max_items=64),
            "depth": _integer("Maximum number of intermediate certificates between a client certificate and "
                              "a trusted root.", default=10, minimum=0, maximum=tls_rules.MAX_DEPTH),
            "keyPasswordSecretRef": _secret_key_ref(
                "Secret holding the password of an encrypted tls.key; mounted as a file, never put into "
                "the rendered config.", "password"),
            "enableCrlCheck": _boolean("Check client certificates against CRLs (their distribution "
                                       "points). Needs verify: verify_peer.", default=False),
            "ocspStapling": _object(
                "Staple OCSP responses fetched from the CA's responder into handshakes.",
                {
                    "enabled": _boolean("Turn OCSP stapling on.", default=False),
                    "responderUrl": _string("URL of the OCSP responder.", max_length=2048),
                    "refreshInterval": _duration("How often the OCSP response is refreshed.",
                                                 default="300s"),
                },
                rules=[_rule("!self.enabled || (has(self.responderUrl) && self.responderUrl != '')",
                             "ocspStapling.enabled needs responderUrl"),
                       _rule("!self.enabled || !has(self.responderUrl) || self.responderUrl == '' || "
                             "self.responderUrl.matches('^https?://[^/?#]+')",
                             "ocspStapling.responderUrl must be an http:// or https:// URL")]),
            "peerCertAsUsername": _string("Use this part of the client certificate as the MQTT username.",
                                          enum=PEER_CERT_AS),
            "peerCertAsClientid": _string("Use this part of the client certificate as the MQTT client id.",
                                          enum=PEER_CERT_AS),
        },
        required=["secretName"],
        rules=[
            _rule("!self.failIfNoPeerCert || self.verify == 'verify_peer'",
                  "failIfNoPeerCert needs verify: verify_peer"),
            _rule("self.verify != 'verify_peer' || has(self.caRef)",
                  "verify: verify_peer needs caRef (a trusted CA bundle)"),
            _rule("!has(self.trustedIssuerCARef) || self.trustedIssuerCARef.name != self.secretName || "
                  "(has(self.trustedIssuerCARef.kind) && self.trustedIssuerCARef.kind == 'ConfigMap')",
                  "trustedIssuerCARef must not be the server Secret: its issuer writes that Secret's ca.crt"),
            _rule("!self.enableCrlCheck || self.verify == 'verify_peer'",
                  "enableCrlCheck needs verify: verify_peer"),
            _rule("(!has(self.peerCertAsUsername) || self.peerCertAsUsername == 'disabled') && "
                  "(!has(self.peerCertAsClientid) || self.peerCertAsClientid == 'disabled') || "
                  "self.verify == 'verify_peer'",
                  "peerCertAsUsername/peerCertAsClientid need verify: verify_peer"),
            # One name per item is checked; an item holding a colon separated list is left to the broker's loader,
            # which the operator runs on the rendered config.
            _rule("!has(self.ciphers) || self.ciphers.all(c, c.contains(':') || c.contains(',') || "
                  f"!c.startsWith('TLS_') || c in {json.dumps(TLS13_SUITES)})",
                  f"ciphers: a name starting with TLS_ must be a TLS 1.3 suite: {', '.join(TLS13_SUITES)}"),
            _rule("!has(self.ciphers) || !self.ciphers.exists(c, c.contains('PSK')) || "
                  "self.versions.exists(v, v != 'tlsv1.3')",
                  "PSK cipher suites need TLS 1.2 or older in versions: PSK is not offered with TLS 1.3 only"),
        ])


def _listener_schema() -> Schema:
    return _object(
        "One MQTT listener of the broker.",
        {
            "name": _string("Listener name, unique in this MQTTBroker; also the container port name.",
                            pattern=r"^[a-z]([-a-z0-9]{0,13}[a-z0-9])?$", max_length=15),
            "type": _string("tcp (plain MQTT), ssl (MQTT over TLS), ws (WebSocket) or wss (WebSocket over TLS).",
                            enum=["tcp", "ssl", "ws", "wss"]),
            "port": _integer("Port the broker listens on (and the Services expose).", minimum=1, maximum=65535),
            "maxConnections": _integer("Maximum concurrent connections per pod; unset means unlimited.",
                                       minimum=1),
            "maxConnRate": _integer("New connections accepted per second per pod; unset means unlimited.",
                                    minimum=1),
            "proxyProtocol": _boolean("Expect a PROXY protocol header (behind a load balancer that sends one). "
                                      "Needs proxyProtocolTrustedCIDRs; not on wss listeners.", default=False),
            "proxyProtocolTrustedCIDRs": _array(
                "The load balancers' addresses: only connections from these networks may carry a PROXY header "
                "(others are closed before a byte is read). Required with proxyProtocol. A header can claim any "
                "client address and, through its TLS TLV, a verified certificate CN: list the balancers only.",
                _string("An IPv4 or IPv6 network (192.0.2.10/32, 10.0.0.0/8, 2001:db8::/64) or one address.",
                        pattern=CIDR_PATTERN, max_length=49),
                max_items=64),
            "websocket": _object("WebSocket settings of a ws or wss listener.", {
                "path": _string("HTTP path that accepts MQTT WebSocket connections.", default="/mqtt",
                                pattern=r"^/.*$", max_length=256),
            }),
            "tls": _tls_schema(),
        },
        required=["name", "type", "port"],
        rules=[
            _rule("(self.type == 'ssl' || self.type == 'wss') == has(self.tls)",
                  "ssl and wss listeners need tls; tcp and ws listeners must not have it"),
            _rule("!has(self.websocket) || self.type == 'ws' || self.type == 'wss'",
                  "websocket settings only apply to ws and wss listeners"),
            # has(): the API server also checks the listeners' default, which it does not default itself.
            _rule("!has(self.proxyProtocol) || !self.proxyProtocol || (has(self.proxyProtocolTrustedCIDRs) && "
                  "size(self.proxyProtocolTrustedCIDRs) > 0)",
                  "proxyProtocol needs proxyProtocolTrustedCIDRs (the load balancers' addresses)"),
            _rule("!has(self.proxyProtocol) || !self.proxyProtocol || self.type != 'wss'",
                  "proxyProtocol is not supported on wss listeners"),
            _rule(f"self.port != {ADMIN_PORT}", f"port {ADMIN_PORT} is the broker's admin API"),
            _rule(f"self.port != {METRICS_PORT}", f"port {METRICS_PORT} is the broker's metrics port"),
            _rule("self.name != 'admin' && self.name != 'metrics' && !self.name.contains('--')",
                  "listener name must not be 'admin' nor 'metrics' nor contain '--'"),
        ])


def _status_schema() -> Schema:
    condition = _object("A standard Kubernetes condition.", {
        "type": _string("Ready, Reconciling, Stalled, CertificatesReady, ConfigApplied, Clustered or Paused."),
        "status": _string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _string("Machine-readable reason in CamelCase."),
        "message": _string("Human-readable explanation."),
        "lastTransitionTime": _string("When the status last changed.", fmt="date-time"),
        "observedGeneration": _integer("The generation this condition was computed for."),
    }, required=["type", "status"])
    listener = _object("The certificate a TLS listener serves.", {
        "name": _string("Listener name."),
        "secretName": _string("The Secret the certificate comes from."),
        "fingerprint": _string("SHA-256 of the expected leaf certificate (DER), lowercase hex."),
        "notAfter": _string("End of the certificate's validity.", fmt="date-time"),
        "podsServing": _integer("Pods that serve the expected certificate."),
        "podsTotal": _integer("Running pods asked."),
        "lastRotationTime": _string("When the last rotation finished on every pod.", fmt="date-time"),
        "lastRotationSeconds": _number("Seconds from seeing the new Secret until every pod served it."),
        "lastError": _string("Why the last rotation was refused or did not finish, if it was."),
        "reason": _string("Why it is not served everywhere: Refused (invalid material, or a pod refused it), "
                          "WaitingForKubelet (the pods' files do not carry the Secret yet), NotServed (a pod "
                          "could not be asked or did not load it) or ClientCAWouldLockOut (a new client-CA bundle is "
                          "held: connected clients would no longer verify against it).",
                          enum=["Refused", "WaitingForKubelet", "NotServed", "ClientCAWouldLockOut"]),
    }, required=["name"])  # a list-map key must be required (or defaulted), or the API server refuses the CRD
    schema = _object("Observed state, written by the operator.", {
        "observedGeneration": _integer("The spec generation the operator last reconciled."),
        "replicas": _integer("Pods the StatefulSet runs."),
        "readyReplicas": _integer("Pods that are ready."),
        "selector": _string("Label selector of the broker pods (for the scale subresource)."),
        "image": _string("The broker image of the StatefulSet's pod template (spec.image, or the operator's "
                         "default when unset); pods move to it one at a time (Ready is False while they do)."),
        "earliestCertificateExpiry": _string("The soonest notAfter among the listeners' certificates.",
                                             fmt="date-time"),
        "conditions": _array("Ready, Reconciling and Stalled (kstatus), CertificatesReady, ConfigApplied, Clustered "
                             "(only with spec.cluster) and Paused.", condition,
                             map_keys=["type"]),
        "listeners": _array("Per TLS listener: the certificate served and its last rotation.", listener,
                            map_keys=["name"]),
        "cluster": _object("Cluster membership, when spec.cluster is set.", {
            "natsReady": _boolean("Whether the NATS servers are ready (a deployed NATS: all 3 pods ready; an "
                                  "existing NATS: every asked broker is connected to it)."),
            "natsReadyReplicas": _integer("Ready pods of the deployed NATS StatefulSet."),
            "members": _array("Member names of the cluster, as the brokers report them.",
                              _string("A member name.")),
            "podsConnected": _integer("Broker pods connected to NATS."),
            "lastError": _string("Why a broker pod could not be asked, if one could not."),
        }),
    })
    # kopf keeps its own bookkeeping under status.kopf; do not let the API server prune it.
    schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def _number(description: str) -> Schema:
    return {"type": "number", "description": description}


NATS_IMAGE = "nats:2.10-alpine"


def _cluster_schema() -> Schema:
    return _object(
        "Run the brokers as one cluster on NATS with JetStream (docs/cluster.md): a client on one pod receives "
        "what a client on another publishes. Either the operator deploys a NATS cluster for this MQTTBroker "
        "(nats.deploy) or the brokers join an existing one (nats.servers).",
        {
            "nats": _object("The NATS cluster the brokers share.", {
                "deploy": _boolean(
                    "Deploy a NATS cluster owned by this MQTTBroker: a StatefulSet of 3 nats-server with "
                    "JetStream, its config, a client and a headless Service and a PodDisruptionBudget.",
                    default=False),
                "servers": _array("URLs of an existing NATS with JetStream (nats:// or tls://).",
                                  _string("A NATS server URL.", pattern=r"^(nats|tls)://.+$", max_length=512),
                                  max_items=16),
                "image": _string("Container image of the deployed nats-server.", default=NATS_IMAGE,
                                 max_length=512),
                "storage": _object("Persistent JetStream storage of each deployed NATS pod "
                                   "(a volumeClaimTemplate).", {
                    "size": _string("Size of each pod's volume.", default="1Gi",
                                    pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$", max_length=32),
                    "storageClassName": _string("StorageClass of the volumes; unset means the default.",
                                                max_length=253),
                }, default={}),
                "resources": _free_object("Compute resources of the nats-server container "
                                          "(core/v1 ResourceRequirements)."),
                "tls": _object(
                    "Mutual TLS between the brokers and NATS. Secrets are mounted as whole volumes.", {
                        "serverSecretName": _string(
                            "kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) the deployed NATS servers "
                            "present; its names must cover <name>-nats.<namespace>.svc and "
                            "*.<name>-nats-headless.<namespace>.svc. Needed with deploy.", max_length=253),
                        "clientSecretName": _string(
                            "Secret (tls.crt, tls.key, ca.crt) the brokers present to NATS; ca.crt verifies "
                            "the NATS servers.", max_length=253),
                        "serverName": _string("Name checked against the NATS servers' certificates; unset "
                                              "means the host of each server URL.", max_length=253),
                    }, required=["clientSecretName"]),
                "credentialsSecretRef": _secret_key_ref(
                    "Secret holding a NATS credentials file (JWT + NKey seed) for an existing NATS.", "nats.creds"),
            }, rules=[
                _rule("self.deploy != (has(self.servers) && size(self.servers) > 0)",
                      "set exactly one of nats.deploy: true and nats.servers"),
                _rule("!self.deploy || !has(self.tls) || has(self.tls.serverSecretName)",
                      "nats.deploy with tls needs tls.serverSecretName"),
                _rule("!self.deploy || !has(self.credentialsSecretRef)",
                      "credentialsSecretRef is for an existing NATS (nats.servers), not a deployed one"),
            ]),
            "streamReplicas": _integer(
                "JetStream replicas of the broker's stream and key-value buckets (at most the number of NATS "
                "servers; 3 for a deployed NATS).", default=3, minimum=1, maximum=5),
        },
        required=["nats"],
        rules=[_rule("!self.nats.deploy || self.streamReplicas <= 3",
                     "streamReplicas is at most 3 with a deployed NATS (it has 3 servers)")])


def spec_schema() -> Schema:
    return _object(
        "Desired state of an MQTT broker deployment.",
        {
            "replicas": _integer("Number of broker pods.", default=1, minimum=0, maximum=100),
            # No default here: a default would be stored in every object, and an operator upgrade could not move
            # the brokers to its new image. Unset means the operator's --broker-image (the chart: its own image).
            "image": _string("Container image running wharf-broker; unset means the operator's default (the image "
                             "the operator was installed with, or its --broker-image), which follows operator "
                             "upgrades by a rolling update.", max_length=512),
            "imagePullPolicy": _string("When the kubelet pulls the image.", default="IfNotPresent",
                                       enum=["Always", "IfNotPresent", "Never"]),
            "imagePullSecrets": _array("Secrets for pulling the image.", _object(
                "A reference to a docker-registry Secret.", {"name": _string("Name of the Secret.")},
                required=["name"]), max_items=16),
            "resources": _free_object("Compute resources of the broker container (core/v1 ResourceRequirements)."),
            "affinity": _free_object("Pod affinity and anti-affinity (core/v1 Affinity)."),
            "tolerations": _array("Tolerations of the broker pods (core/v1 Toleration).",
                                  _free_object("A toleration."), max_items=64),
            "nodeSelector": _string_map("Node labels the broker pods must run on."),
            "priorityClassName": _string("PriorityClass of the broker pods.", max_length=253),
            "podSecurityContext": _free_object(
                "Pod security context (core/v1 PodSecurityContext); by default non-root with the "
                "RuntimeDefault seccomp profile."),
            "securityContext": _free_object(
                "Container security context (core/v1 SecurityContext); by default no privilege escalation, "
                "all capabilities dropped and a read-only root filesystem."),
            "podAnnotations": _string_map("Extra annotations on the broker pods."),
            "podLabels": _string_map("Extra labels on the broker pods."),
            "terminationGracePeriodSeconds": _integer(
                "Time a broker gets to shut down gracefully.", default=30, minimum=0, maximum=3600),
            "listeners": _array(
                "MQTT listeners.", _listener_schema(),
                default=[{"name": "mqtt", "type": "tcp", "port": 1883}],
                min_items=1, max_items=16, map_keys=["name"],
                rules=[_rule("self.all(l, self.filter(m, m.port == l.port).size() == 1)",
                             "listener ports must be unique")]),
            "service": _object("The client Service in front of the brokers.", {
                "type": _string("Service type.", default="ClusterIP",
                                enum=["ClusterIP", "NodePort", "LoadBalancer"]),
                "annotations": _string_map("Annotations of the client Service (e.g. for a cloud load balancer)."),
                "labels": _string_map("Extra labels of the client Service."),
            }, default={}),
            "reloadInterval": _duration(
                "How often each broker re-checks its certificate files on its own: the last resort after "
                "the operator's reload signal and its periodic check.", default="120s"),
            "podDisruptionBudget": _object("The PodDisruptionBudget of the broker pods.", {
                "maxUnavailable": _integer("Pods that may be down at once for voluntary disruptions.",
                                           default=1, minimum=0),
            }, default={}),
            "pskAuthentication": _object("TLS-PSK identities (TLS 1.2 PSK cipher suites).", {
                "enabled": _boolean("Turn PSK authentication on.", default=False),
                "secretRef": _secret_key_ref("Secret with lines of identity:secret.", "psk.txt"),
            }, rules=[_rule("!self.enabled || has(self.secretRef)", "pskAuthentication.enabled needs secretRef")]),
            "authentication": _object(
                "Who may connect. Without passwordFile or http, only allowAnonymous lets clients in.", {
                    "allowAnonymous": _boolean(
                        "Let in clients that no authenticator accepted or refused (EMQX's allow_anonymous).",
                        default=False),
                    "passwordFile": _object(
                        "Users with salted slow hashes, one user:hash a line (made with python -m "
                        "wharf_broker.authn.passwd), from a Secret mounted as a whole volume: edits reach the "
                        "running brokers without a restart.", {
                            "secretRef": _secret_key_ref("Secret holding the password file.", "passwd"),
                            "reloadInterval": _duration("How often the brokers re-check the file.",
                                                        default="10s"),
                        }, required=["secretRef"]),
                    "http": _object(
                        "An HTTP service asked after the password file (POST JSON; answers allow, deny or "
                        "ignore).", {
                            "url": _string("The service's URL.", max_length=2048, pattern=r"^https?://"),
                            "requestTimeout": _duration("Timeout of one request; a timeout means ignore.",
                                                        default="5s"),
                            "cacheTTL": _duration("How long an answer is reused.", default="60s"),
                        }, required=["url"]),
                }, default={}),
            "authorization": _object(
                "Topic ACLs: what clients may publish and subscribe to.", {
                    "noMatch": _string("The decision when no ACL rule matches.", default="deny",
                                       enum=["allow", "deny"]),
                    "denyAction": _string("What a refused PUBLISH costs the client besides the refusal.",
                                          default="ignore", enum=["ignore", "disconnect"]),
                    "aclRef": _object(
                        "A ConfigMap or Secret holding the rules in EMQX acl.conf syntax, mounted as a whole "
                        "volume: edits reach the running brokers without a restart.", {
                            "kind": _string("ConfigMap or Secret.", default="ConfigMap",
                                            enum=["ConfigMap", "Secret"]),
                            "name": _string("Its name, in the MQTTBroker's namespace.", max_length=253),
                            "key": _string("The key holding the rules.", default="acl.conf", max_length=253),
                            "reloadInterval": _duration("How often the brokers re-check the rules.",
                                                        default="10s"),
                        }, required=["name"]),
                }, default={}),
            "config": _free_object(
                "Extra broker configuration (EMQX-style keys, e.g. {mqtt: {max_packet_size: 2MB}}) merged "
                "into the rendered config. listeners, dashboard, node, authentication and authorization are "
                "managed by the operator."),
            "cluster": _cluster_schema(),
            "durableStorage": _object(
                "Durable broker state (durable_storage): persistent sessions, their queued and in-flight "
                "messages, retained messages and delayed wills survive pod restarts on a PersistentVolumeClaim "
                "per broker pod (a volumeClaimTemplate; the volume outlives the pod). Standalone brokers only: "
                "a cluster keeps that state in JetStream.", {
                    "enabled": _boolean("Keep durable state on a volume.", default=False),
                    "size": _string("Size of each broker pod's volume.", default="1Gi",
                                    pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$", max_length=32),
                    "storageClassName": _string("StorageClass of the volumes; unset means the default.",
                                                max_length=253),
                    "synchronous": _string("full: every acknowledged message survives a power loss; normal: "
                                           "it survives a crash of the broker.", default="full",
                                           enum=["full", "normal"]),
                }, default={}),
            "networkPolicy": _object(
                "A NetworkPolicy for the broker pods (and a deployed NATS' pods), owned by this MQTTBroker: ingress "
                "to the MQTT listeners' ports from anywhere, to the read-only metrics port from anywhere or "
                "metricsFrom, to the admin API port only from the operator's pods; deployed NATS servers take "
                "clients from the broker pods and routes from each other. Egress is not restricted.", {
                    "enabled": _boolean("Create the NetworkPolicies; unset: the operator's default "
                                        "(--network-policy, on unless the operator is started with "
                                        "--no-network-policy; the chart's operator.networkPolicy.enabled)."),
                    "metricsFrom": _array(
                        "Who may scrape the metrics port; empty: anyone.",
                        _free_object("A NetworkPolicyPeer (networking.k8s.io/v1): podSelector, namespaceSelector "
                                     "or ipBlock."), max_items=32),
                }, default={}),
            "certificate": _object(
                "Let the operator create a cert-manager Certificate (owned by this MQTTBroker) whose DNS names "
                "come from the Services.",
                {
                    "issuerRef": _object("The cert-manager issuer.", {
                        "name": _string("Issuer name."),
                        "kind": _string("Issuer or ClusterIssuer.", default="Issuer",
                                        enum=["Issuer", "ClusterIssuer"]),
                        "group": _string("API group of the issuer.", default="cert-manager.io"),
                    }, required=["name"]),
                    "secretName": _string("Secret cert-manager writes; TLS listeners reference it by "
                                          "tls.secretName.", max_length=253),
                    "duration": _duration("Requested certificate lifetime."),
                    "renewBefore": _duration("How long before expiry cert-manager renews."),
                    "dnsNames": _array("Extra DNS names besides the Services' names.",
                                       _string("A DNS name.", max_length=253), max_items=64),
                },
                required=["issuerRef", "secretName"]),
        },
        rules=[_rule("!has(self.certificate) || self.listeners.exists(l, has(l.tls) && "
                     "l.tls.secretName == self.certificate.secretName)",
                     "certificate.secretName must be the tls.secretName of a listener"),
               _rule("!has(self.durableStorage) || !self.durableStorage.enabled || !has(self.cluster)",
                     "durableStorage is for standalone brokers: a cluster keeps sessions in JetStream")])


def crd_manifest() -> dict[str, Any]:
    """The whole CustomResourceDefinition object, annotated with its schema revision and the digest of its spec."""
    spec = _crd_spec()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME,
                     "labels": {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/component": "crd"},
                     "annotations": {REVISION_ANNOTATION: str(SCHEMA_REVISION), DIGEST_ANNOTATION: spec_digest(spec)}},
        "spec": spec,
    }


def spec_digest(spec: dict[str, Any]) -> str:
    """A short digest of a CRD spec as this module builds it (not as the API server returns it, defaulted)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _crd_spec() -> dict[str, Any]:
    return {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                  "shortNames": SHORT_NAMES, "categories": ["all", "wharf"]},
        "versions": [{
            "name": VERSION,
            "served": True,
            "storage": True,
            "subresources": {
                "status": {},
                "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                          "labelSelectorPath": ".status.selector"},
            },
            "additionalPrinterColumns": [
                {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                 "description": "Whether every broker pod is ready and serves the expected certificates."},
                {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas",
                 "description": "Desired broker pods."},
                {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas",
                 "description": "Ready broker pods."},
                # A string, not a date: kubectl prints future dates as "<invalid>".
                {"name": "Cert-Expiry", "type": "string", "jsonPath": ".status.earliestCertificateExpiry",
                 "description": "The soonest certificate expiry among the TLS listeners."},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "description": "MQTTBroker runs Wharf MQTT brokers and rotates their TLS certificates "
                               "without restarting them.",
                "properties": {
                    "apiVersion": _string("API version of this object."),
                    "kind": _string("Kind of this object."),
                    "metadata": {"type": "object"},
                    "spec": spec_schema(),
                    "status": _status_schema(),
                },
                "required": ["spec"],
            }},
        }],
    }


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Return a copy of ``value`` with the schema's defaults filled in, as the API server does."""
    value = copy.deepcopy(value)
    _default_in_place(schema, value)
    return value


def _default_in_place(schema: Schema, value: Any) -> None:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default_in_place(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(schema["items"], item)


def defaulted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return apply_defaults(spec_schema(), dict(spec))


def render_yaml() -> str:
    import yaml

    header = ("# Generated by `python -m wharf_operator.crd`; do not edit by hand.\n"
              "# Source: operator/wharf_operator/crd.py\n")
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
