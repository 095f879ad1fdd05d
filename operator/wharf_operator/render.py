"""Renders an MQTTBroker's (defaulted) spec into the broker's HOCON config, deterministically.

The same spec always gives the same bytes, so the ConfigMap is only updated when something really changed.
``config_tree`` builds the config as nested dicts (EMQX key names, as ``wharf_broker.config.model`` reads
them); ``to_hocon`` writes it. ``restart_hash`` covers everything the broker cannot apply live: a change there
rolls the pods, while a change to a listener's ``ssl_options`` only is pushed to the running brokers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Any

from . import layout, nats
from .crd import ADMIN_PORT, METRICS_PORT

# Roots of the broker config that the operator manages itself; spec.config may not set them.
MANAGED_ROOTS = ("listeners", "dashboard", "prometheus", "node", "authentication", "authorization",
                 "durable_storage")

Tree = dict[str, Any]


class RenderError(ValueError):
    """The spec cannot be turned into a broker config (the message says why)."""


class EnvSubstitution(str):
    """A value the broker's HOCON loader takes from the environment (``${?NAME}``): left out when unset."""


# The pod's environment carries the member name (wharf@<pod name>, see resources.stateful_set).
NODE_NAME_ENV = "WHARF_NODE_NAME"


def ssl_options(listener: dict[str, Any], reload_interval: str, root: str = layout.ROOT) -> Tree:
    """A TLS listener's ``ssl_options`` with paths into the pod's Secret volumes."""
    name, tls = listener["name"], listener["tls"]
    certs = layout.cert_dir(name, root)
    # The served chain's trust anchor: the broker refuses a chain that leads neither to it nor to the clients' CA
    # bundle, as the operator does (broker/tls/validation.py). Pinned (tls.trustedIssuerCARef), a bundle the issuer
    # does not write; otherwise the Secret's issuer CA (cert-manager's ca.crt; absent, no issuer is known).
    if "trustedIssuerCARef" in tls:
        server_ca = f"{layout.issuer_ca_dir(name, root)}/{tls['trustedIssuerCARef'].get('key', 'ca.crt')}"
    else:
        server_ca = f"{certs}/ca.crt"
    options: Tree = {
        "certfile": f"{certs}/tls.crt",
        "keyfile": f"{certs}/tls.key",
        "server_cacertfile": server_ca,
    }
    if "caRef" in tls:
        options["cacertfile"] = f"{layout.ca_dir(name, root)}/{tls['caRef'].get('key', 'ca.crt')}"
    if "keyPasswordSecretRef" in tls:
        ref = tls["keyPasswordSecretRef"]
        options["password_file"] = f"{layout.key_password_dir(name, root)}/{ref.get('key', 'password')}"
    options["verify"] = tls.get("verify", "verify_none")
    options["fail_if_no_peer_cert"] = bool(tls.get("failIfNoPeerCert", False))
    if "caRef" in tls and options["verify"] == "verify_peer":
        # The broker holds a client-CA bundle the kubelet projected that connected clients would no longer verify
        # against, until the operator's reload names it (after asking, or forced): its own re-checks do not load
        # it behind the operator's back (docs/mqttbroker.md, "Client-CA rotation").
        options["client_ca_guard"] = True
    options["versions"] = list(tls.get("versions", ["tlsv1.3", "tlsv1.2"]))
    if tls.get("ciphers"):
        options["ciphers"] = list(tls["ciphers"])
    options["depth"] = int(tls.get("depth", 10))
    options["enable_crl_check"] = bool(tls.get("enableCrlCheck", False))
    ocsp = tls.get("ocspStapling") or {}
    if ocsp.get("enabled"):
        options["ocsp"] = {
            "enable_ocsp_stapling": True,
            "responder_url": ocsp["responderUrl"],
            # cert-manager's ca.crt in the server Secret is the issuer of the leaf: what OCSP needs.
            "issuer_pem": f"{certs}/ca.crt",
            "refresh_interval": ocsp.get("refreshInterval", "300s"),
        }
    options["reload_interval"] = reload_interval
    return options


def _trusted_cidrs(listener: dict[str, Any]) -> list[str]:
    """``proxyProtocolTrustedCIDRs``, each checked as the broker will (a bad one would stop the broker)."""
    where = f"spec.listeners[{listener['name']}].proxyProtocolTrustedCIDRs"
    cidrs = [str(cidr) for cidr in listener.get("proxyProtocolTrustedCIDRs") or []]
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise RenderError(f"{where}: {cidr!r} is not an IP address or network: {exc}") from None
    if listener.get("proxyProtocol") and not cidrs:
        raise RenderError(f"{where}: proxyProtocol needs the load balancers' addresses")
    return cidrs


def _listener(listener: dict[str, Any], reload_interval: str, root: str) -> Tree:
    entry: Tree = {"enable": True, "bind": f"0.0.0.0:{listener['port']}"}
    if listener.get("maxConnections") is not None:
        entry["max_connections"] = int(listener["maxConnections"])
    if listener.get("maxConnRate") is not None:
        entry["max_conn_rate"] = int(listener["maxConnRate"])
    entry["proxy_protocol"] = bool(listener.get("proxyProtocol", False))
    trusted = _trusted_cidrs(listener)
    if trusted:
        entry["proxy_protocol_trusted_cidrs"] = trusted
    if listener["type"] in ("ws", "wss"):
        entry["websocket"] = {"mqtt_path": (listener.get("websocket") or {}).get("path", "/mqtt")}
    if listener["type"] in ("ssl", "wss"):
        tls = listener["tls"]
        for spec_key, config_key in (("peerCertAsUsername", "peer_cert_as_username"),
                                     ("peerCertAsClientid", "peer_cert_as_clientid")):
            if tls.get(spec_key):
                entry[config_key] = tls[spec_key]
        entry["ssl_options"] = ssl_options(listener, reload_interval, root)
    return entry


def config_tree(spec: dict[str, Any], root: str = layout.ROOT, *, broker: str = "", namespace: str = "") -> Tree:
    """The broker config as nested dicts, from a spec with the CRD's defaults applied; files under ``root``.

    ``broker`` and ``namespace`` name the MQTTBroker: a deployed NATS is reached by its pods' DNS names.
    """
    reload_interval = spec.get("reloadInterval", "120s")
    listeners: Tree = {}
    for listener in spec.get("listeners", []):
        listeners.setdefault(listener["type"], {})[listener["name"]] = _listener(listener, reload_interval, root)
    tree: Tree = {
        "listeners": {kind: listeners[kind] for kind in ("tcp", "ssl", "ws", "wss") if kind in listeners},
        "dashboard": {
            "enable": True,
            "listeners": {"http": {"bind": f"0.0.0.0:{ADMIN_PORT}"}},
            "token_file": layout.admin_token_file(root),
        },
        # The read-only metrics port: GET /metrics without the admin token (the Services' port "metrics").
        "prometheus": {"enable": True, "bind": f"0.0.0.0:{METRICS_PORT}"},
    }
    psk = spec.get("pskAuthentication") or {}
    if psk.get("enabled"):
        tree["psk_authentication"] = {
            "enable": True,
            "init_file": f"{layout.psk_dir(root)}/{psk['secretRef'].get('key', 'psk.txt')}",
        }
    tree["authentication"] = _authentication(spec.get("authentication") or {}, root)
    tree["authorization"] = _authorization(spec.get("authorization") or {}, root)
    extra = spec.get("config") or {}
    if not isinstance(extra, dict):
        raise RenderError("spec.config must be an object of broker config keys")
    for managed in MANAGED_ROOTS:
        if managed in extra:
            raise RenderError(f"spec.config.{managed} is managed by the operator; use the MQTTBroker's fields")
    if spec.get("cluster"):
        tree["cluster"] = cluster(spec["cluster"], root, broker, namespace)
        # Every replica shares this file; each one's member name comes from its own pod.
        tree["node"] = {"name": EnvSubstitution(NODE_NAME_ENV)}
        extra_cluster = extra.get("cluster")
        if isinstance(extra_cluster, dict):
            for managed in CLUSTER_MANAGED_KEYS:
                if managed in extra_cluster:
                    raise RenderError(f"spec.config.cluster.{managed} is managed by the operator with "
                                      f"spec.cluster; use spec.cluster's fields")
    durable = spec.get("durableStorage") or {}
    if durable.get("enabled"):
        if spec.get("cluster"):
            raise RenderError("spec.durableStorage is for standalone brokers: a cluster keeps sessions in JetStream")
        tree["durable_storage"] = {"enable": True, "data_dir": layout.data_dir(),
                                   "synchronous": durable.get("synchronous", "full")}
    _merge(tree, extra, "spec.config")
    return tree


# With spec.cluster, spec.config.cluster may still tune the rest (stream_max_age, interest_ttl, ...).
CLUSTER_MANAGED_KEYS = ("enable", "nats", "replicas")


def cluster(spec: dict[str, Any], root: str, broker: str, namespace: str) -> Tree:
    """The broker's ``cluster {}`` section for spec.cluster."""
    wanted = spec["nats"]
    tls = wanted.get("tls")
    if wanted.get("deploy"):
        if not broker or not namespace:
            raise RenderError("a deployed NATS needs the MQTTBroker's name and namespace")
        servers = nats.client_urls(broker, namespace, tls is not None)
    else:
        servers = list(wanted.get("servers") or [])
        if not servers:
            raise RenderError("spec.cluster.nats needs deploy: true or servers")
    section: Tree = {"servers": servers}
    if tls:
        client = layout.nats_tls_dir(root)
        section["tls"] = {"enable": True, "cacertfile": f"{client}/ca.crt", "certfile": f"{client}/tls.crt",
                          "keyfile": f"{client}/tls.key"}
        if tls.get("serverName"):
            section["tls"]["server_name"] = tls["serverName"]
    creds = wanted.get("credentialsSecretRef")
    if creds:
        section["credentials"] = f"{layout.nats_credentials_dir(root)}/{creds.get('key', 'nats.creds')}"
    return {"enable": True, "nats": section, "replicas": int(spec.get("streamReplicas", 3))}


def _authentication(spec: dict[str, Any], root: str) -> Tree:
    """Anonymous clients are refused unless the MQTTBroker asks for them (the broker's own default is on)."""
    tree: Tree = {"allow_anonymous": bool(spec.get("allowAnonymous", False))}
    password_file = spec.get("passwordFile")
    if password_file:
        ref = password_file["secretRef"]
        tree["password_file"] = {"enable": True, "path": f"{layout.users_dir(root)}/{ref.get('key', 'passwd')}",
                                 "reload_interval": password_file.get("reloadInterval", "10s")}
    http = spec.get("http")
    if http:
        tree["http"] = {"enable": True, "url": http["url"], "request_timeout": http.get("requestTimeout", "5s"),
                        "cache_ttl": http.get("cacheTTL", "60s")}
    return tree


def _authorization(spec: dict[str, Any], root: str) -> Tree:
    """No rule matching means deny unless the MQTTBroker says otherwise."""
    tree: Tree = {"no_match": spec.get("noMatch", "deny"), "deny_action": spec.get("denyAction", "ignore")}
    acl = spec.get("aclRef")
    if acl:
        tree["file"] = {"enable": True, "path": f"{layout.acl_dir(root)}/{acl.get('key', 'acl.conf')}",
                        "reload_interval": acl.get("reloadInterval", "10s")}
    return tree


def _merge(into: Tree, extra: Tree, where: str) -> None:
    # Sorted so that the rendered text does not depend on the order keys arrived in.
    for key in sorted(extra):
        value = extra[key]
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, f"{where}.{key}")
        elif isinstance(value, dict):
            into[key] = {}
            _merge(into[key], value, f"{where}.{key}")
        else:
            into[key] = value


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, EnvSubstitution):
        return f"${{?{value}}}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a HOCON quoted string
    if value is None:
        return "null"
    raise RenderError(f"{where}: cannot write a value of type {type(value).__name__}")


def _key(key: str) -> str:
    # Quote keys that are not plain identifiers so a dot in a key never becomes a path.
    if key and all(c.isalnum() or c in "_-" for c in key):
        return key
    return json.dumps(key)


def to_hocon(tree: Tree) -> str:
    lines: list[str] = ["# Rendered by wharf-operator from the MQTTBroker; changes here are overwritten."]
    _write(tree, 0, lines, "")
    return "\n".join(lines) + "\n"


def _write(tree: Tree, depth: int, lines: list[str], where: str) -> None:
    pad = "  " * depth
    for key, value in tree.items():
        path = f"{where}.{key}" if where else key
        if isinstance(value, dict):
            lines.append(f"{pad}{_key(key)} {{")
            _write(value, depth + 1, lines, path)
            lines.append(f"{pad}}}")
        elif isinstance(value, list):
            if any(isinstance(item, (dict, list)) for item in value):
                lines.append(f"{pad}{_key(key)} = {json.dumps(value, sort_keys=True)}")
            else:
                items = ", ".join(_scalar(item, path) for item in value)
                lines.append(f"{pad}{_key(key)} = [{items}]")
        else:
            lines.append(f"{pad}{_key(key)} = {_scalar(value, path)}")


def render(spec: dict[str, Any], root: str = layout.ROOT, *, broker: str = "", namespace: str = "") -> str:
    return to_hocon(config_tree(spec, root, broker=broker, namespace=namespace))


def live_ssl_options(tree: Tree) -> dict[str, Tree]:
    """``{"ssl:<name>": ssl_options}`` for every TLS listener: the part the brokers apply live."""
    result: dict[str, Tree] = {}
    for kind in ("ssl", "wss"):
        for name, listener in tree.get("listeners", {}).get(kind, {}).items():
            result[f"{kind}:{name}"] = listener["ssl_options"]
    return result


def restart_hash(tree: Tree) -> str:
    """Hash of everything except the listeners' ssl_options: when it changes, pods must be replaced.

    It holds no certificate content (the config only names files), so a certificate rotation never changes it.
    """
    stripped = json.loads(json.dumps(tree))
    for kind in ("ssl", "wss"):
        for listener in stripped.get("listeners", {}).get(kind, {}).values():
            listener.pop("ssl_options", None)
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:16]
