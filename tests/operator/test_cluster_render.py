"""spec.cluster: the broker's cluster {} section, the deployed NATS' config and objects, the CRD's rules."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from operator_pki import make_ca, make_leaf
from wharf_operator import layout, nats, render, resources
from wharf_operator.crd import defaulted_spec, spec_schema

DEPLOY = {"replicas": 3, "cluster": {"nats": {
    "deploy": True, "image": "nats:test", "storage": {"size": "5Gi", "storageClassName": "fast"},
    "tls": {"serverSecretName": "nats-server-tls", "clientSecretName": "nats-client-tls"}}}}
SERVERS = {"replicas": 2, "cluster": {"nats": {
    "servers": ["tls://nats.messaging.svc:4222"],
    "tls": {"clientSecretName": "nats-client", "serverName": "nats.messaging.svc"},
    "credentialsSecretRef": {"name": "nats-creds"}}, "streamReplicas": 1}}


def _write_pem_files(directory, ca, leaf) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # The admin token the rendered dashboard section names, beside the pod's other files.
    (directory.parent.parent / "admin").mkdir(parents=True, exist_ok=True)
    (directory.parent.parent / "admin" / "token").write_text("t0ken")
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "tls.crt").write_bytes(leaf.cert_pem)
    (directory / "tls.key").write_bytes(leaf.key_pem())


def test_deployed_nats_section_loads_in_the_broker_with_real_files(tmp_path):
    from wharf_broker.config import loader

    ca = make_ca()
    _write_pem_files(tmp_path / "nats" / "tls", ca, make_leaf(ca, "wharf-0"))
    hocon = render.render(defaulted_spec(DEPLOY), root=str(tmp_path), broker="wharf", namespace="mq")
    config = loader.load_string(hocon, "rendered")
    cluster = config.cluster
    assert cluster.enable is True
    assert cluster.replicas == 3
    assert cluster.nats.servers == [f"tls://wharf-nats-{i}.wharf-nats-headless.mq.svc:4222" for i in range(3)]
    assert cluster.nats.tls.enable is True
    assert cluster.nats.tls.certfile == f"{layout.nats_tls_dir(str(tmp_path))}/tls.crt"
    assert cluster.nats.tls.cacertfile == f"{layout.nats_tls_dir(str(tmp_path))}/ca.crt"
    assert config.node.name == "wharf@127.0.0.1"  # no pod environment here: the broker's default


def test_member_name_comes_from_the_pod(tmp_path, monkeypatch):
    from wharf_broker.config import loader

    ca = make_ca()
    _write_pem_files(tmp_path / "nats" / "tls", ca, make_leaf(ca, "wharf-0"))
    hocon = render.render(defaulted_spec(DEPLOY), root=str(tmp_path), broker="wharf", namespace="mq")
    assert "name = ${?WHARF_NODE_NAME}" in hocon
    env = resources.stateful_set("wharf", "mq", defaulted_spec(DEPLOY), "h")["spec"]["template"]["spec"][
        "containers"][0]["env"]
    names = [e["name"] for e in env]
    # $(POD_NAME) expands only when POD_NAME is defined before it.
    assert names.index("POD_NAME") < names.index("WHARF_NODE_NAME")
    assert next(e for e in env if e["name"] == "WHARF_NODE_NAME")["value"] == "wharf@$(POD_NAME)"
    monkeypatch.setenv("WHARF_NODE_NAME", "wharf@wharf-2")
    assert loader.load_string(hocon, "rendered").node.name == "wharf@wharf-2"
    # Standalone brokers keep the broker's own default.
    assert "node" not in render.config_tree(defaulted_spec({"replicas": 1}))


def test_existing_nats_section_with_credentials_and_server_name(tmp_path):
    from wharf_broker.config import loader

    ca = make_ca()
    _write_pem_files(tmp_path / "nats" / "tls", ca, make_leaf(ca, "client"))
    (tmp_path / "nats" / "creds").mkdir(parents=True)
    (tmp_path / "nats" / "creds" / "nats.creds").write_text("-----BEGIN NATS USER JWT-----\n")
    spec = defaulted_spec({**SERVERS, "config": {"cluster": {"stream_max_age": "10m"}}})
    config = loader.load_string(render.render(spec, root=str(tmp_path)), "rendered")
    assert config.cluster.nats.servers == ["tls://nats.messaging.svc:4222"]
    assert config.cluster.nats.tls.server_name == "nats.messaging.svc"
    assert config.cluster.nats.credentials == f"{tmp_path}/nats/creds/nats.creds"
    assert config.cluster.replicas == 1
    assert config.cluster.stream_max_age == 600  # spec.config.cluster still tunes what spec.cluster leaves


def test_spec_config_cannot_take_over_what_spec_cluster_manages():
    for key in ("enable", "nats", "replicas"):
        spec = defaulted_spec({**SERVERS, "config": {"cluster": {key: {} if key == "nats" else 1}}})
        with pytest.raises(render.RenderError, match=f"spec.config.cluster.{key}"):
            render.config_tree(spec)


def test_a_deployed_nats_needs_the_brokers_name():
    with pytest.raises(render.RenderError, match="name and namespace"):
        render.config_tree(defaulted_spec(DEPLOY))


def test_cluster_changes_roll_the_broker_pods():
    plain = render.restart_hash(render.config_tree(defaulted_spec({"replicas": 3})))
    clustered = render.restart_hash(render.config_tree(defaulted_spec(DEPLOY), broker="wharf", namespace="mq"))
    assert plain != clustered


def test_broker_pods_mount_the_nats_client_secrets_as_whole_volumes():
    sts = resources.stateful_set("wharf", "mq", defaulted_spec(SERVERS), "hash")
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["nats-tls"]["secret"]["secretName"] == "nats-client"
    assert volumes["nats-creds"]["secret"]["secretName"] == "nats-creds"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["nats-tls"]["mountPath"] == layout.nats_tls_dir()
    assert mounts["nats-creds"]["mountPath"] == layout.nats_credentials_dir()
    assert not any("subPath" in m for m in mounts.values())


def test_deployed_nats_objects():
    spec = defaulted_spec(DEPLOY)
    sts = nats.stateful_set("wharf", "mq", spec)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "wharf-nats-headless"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "nats:test"
    assert {"name": "tls", "secret": {"secretName": "nats-server-tls", "defaultMode": 0o440}} in pod["volumes"]
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "5Gi" and claim["storageClassName"] == "fast"
    # The NATS pods must never be selected as brokers (Services, the brokers' StatefulSet, signalled pods).
    broker_selector = resources.selector_labels("wharf")
    nats_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert not all(nats_labels.get(k) == v for k, v in broker_selector.items())
    headless = nats.headless_service("wharf", "mq")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"] for p in headless["spec"]["ports"]} == {"client", "route", "monitor"}
    assert nats.pod_disruption_budget("wharf", "mq")["spec"]["maxUnavailable"] == 1
    config = nats.config_map("wharf", "mq", spec)["data"][nats.CONFIG_KEY]
    for i in range(3):
        assert f"nats://wharf-nats-{i}.wharf-nats-headless.mq.svc:6222" in config
    assert "verify: true" in config


def test_nats_pods_roll_when_their_config_changes():
    without_tls = {key: value for key, value in DEPLOY["cluster"]["nats"].items() if key != "tls"}
    a = nats.stateful_set("wharf", "mq", defaulted_spec(DEPLOY))
    b = nats.stateful_set("wharf", "mq", defaulted_spec({**DEPLOY, "cluster": {"nats": without_tls}}))
    hash_a = a["spec"]["template"]["metadata"]["annotations"][nats.CONFIG_HASH_ANNOTATION]
    hash_b = b["spec"]["template"]["metadata"]["annotations"][nats.CONFIG_HASH_ANNOTATION]
    assert hash_a != hash_b  # TLS on/off changes nats.conf, so the NATS pods roll


@pytest.mark.skipif(shutil.which("nats-server") is None and not os.environ.get("WHARF_STRICT_SKIPS"),
                    reason="nats-server is not installed")
@pytest.mark.parametrize("with_tls", [True, False])
def test_nats_server_accepts_the_rendered_config(tmp_path, with_tls):
    """The real nats-server parses and checks the config (``-t``: test and exit, nothing listens)."""
    ca = make_ca()
    tls_dir = tmp_path / "nats" / "tls"
    _write_pem_files(tls_dir, ca, make_leaf(ca, "*.wharf-nats-headless.mq.svc"))
    spec = defaulted_spec(DEPLOY if with_tls else {"replicas": 3, "cluster": {"nats": {"deploy": True}}})
    conf = tmp_path / "nats.conf"
    conf.write_text(nats.server_config("wharf", "mq", spec, tls_dir=str(tls_dir),
                                       data_dir=str(tmp_path / "data")))
    result = subprocess.run(["nats-server", "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30,
                            check=False, env={**os.environ, "POD_NAME": "wharf-nats-0"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_defaults_of_the_cluster():
    spec = defaulted_spec({"cluster": {"nats": {"deploy": True}}})
    assert spec["cluster"]["nats"]["image"] == "nats:2.10-alpine"
    assert spec["cluster"]["nats"]["storage"]["size"] == "1Gi"
    assert spec["cluster"]["streamReplicas"] == 3
    rules = [r["rule"] for r in spec_schema()["properties"]["cluster"]["properties"]["nats"]
             ["x-kubernetes-validations"]]
    assert any("self.deploy != " in r for r in rules)
