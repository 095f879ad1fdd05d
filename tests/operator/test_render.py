"""Rendering the broker config from an MQTTBroker spec: deterministic, and loadable by the broker itself."""

from __future__ import annotations

import random

import pytest
from operator_pki import make_ca, make_leaf
from wharf_operator import layout, render
from wharf_operator.crd import defaulted_spec

FULL_SPEC = {
    "listeners": [
        {"name": "mqtt", "type": "tcp", "port": 1883, "maxConnections": 5000},
        {"name": "mqtts", "type": "ssl", "port": 8883, "tls": {
            "secretName": "broker-tls", "caRef": {"name": "client-ca", "key": "bundle.pem"},
            "verify": "verify_peer", "failIfNoPeerCert": True, "versions": ["tlsv1.2"],
            "ciphers": ["ECDHE-ECDSA-AES128-GCM-SHA256"], "depth": 3,
            "keyPasswordSecretRef": {"name": "key-pass"}, "peerCertAsUsername": "cn"}},
        {"name": "ws", "type": "ws", "port": 8083, "websocket": {"path": "/ws"}},
        {"name": "wss", "type": "wss", "port": 8084, "tls": {"secretName": "broker-tls"}},
    ],
    "reloadInterval": "30s",
    "pskAuthentication": {"enabled": True, "secretRef": {"name": "psk"}},
    "config": {"mqtt": {"max_packet_size": "2MB", "max_qos_allowed": 1}, "log": {"level": "debug"}},
}


def _shuffled(value):
    """The same data with every dict's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        random.Random(len(items)).shuffle(items)
        return {k: _shuffled(v) for k, v in reversed(items)}
    if isinstance(value, list):
        return [_shuffled(v) for v in value]
    return value


def test_rendering_is_deterministic():
    first = render.render(defaulted_spec(FULL_SPEC))
    assert render.render(defaulted_spec(FULL_SPEC)) == first
    assert render.render(defaulted_spec(_shuffled(FULL_SPEC))) == first


def test_tls_paths_point_into_whole_secret_mounts():
    tree = render.config_tree(defaulted_spec(FULL_SPEC))
    options = tree["listeners"]["ssl"]["mqtts"]["ssl_options"]
    assert options["certfile"] == "/etc/wharf/certs/mqtts/tls.crt"
    assert options["keyfile"] == "/etc/wharf/certs/mqtts/tls.key"
    assert options["cacertfile"] == "/etc/wharf/ca/mqtts/bundle.pem"
    assert options["server_cacertfile"] == "/etc/wharf/certs/mqtts/ca.crt"  # the gate checks the chain against it
    assert options["password_file"] == "/etc/wharf/keypass/mqtts/password"
    assert "password" not in options  # the password itself never enters the ConfigMap
    assert options["reload_interval"] == "30s"
    assert tree["dashboard"]["listeners"]["http"]["bind"] == "0.0.0.0:18083"
    assert tree["dashboard"]["token_file"] == "/etc/wharf/admin/token"
    # The read-only metrics port, in every pod (the container port "metrics").
    assert tree["prometheus"] == {"enable": True, "bind": "0.0.0.0:9184"}


def test_spec_config_cannot_take_over_managed_roots():
    for root in render.MANAGED_ROOTS:
        with pytest.raises(render.RenderError, match=f"spec.config.{root}"):
            render.config_tree(defaulted_spec({"config": {root: {}}}))


def test_tls_option_changes_do_not_change_the_restart_hash_but_new_listeners_do():
    base = render.config_tree(defaulted_spec(FULL_SPEC))
    changed_tls = defaulted_spec(FULL_SPEC)
    changed_tls["listeners"][1]["tls"]["versions"] = ["tlsv1.3", "tlsv1.2"]
    changed_tree = render.config_tree(changed_tls)
    assert render.restart_hash(changed_tree) == render.restart_hash(base)
    assert render.live_ssl_options(changed_tree)["ssl:mqtts"]["versions"] == ["tlsv1.3", "tlsv1.2"]
    more = defaulted_spec({**FULL_SPEC, "listeners": FULL_SPEC["listeners"] + [
        {"name": "extra", "type": "tcp", "port": 11883}]})
    assert render.restart_hash(render.config_tree(more)) != render.restart_hash(base)


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_rendered_config_loads_in_the_broker(tmp_path):
    """The broker's own loader accepts what the operator renders, with real files where the pod has them."""
    loader = pytest.importorskip("wharf_broker.config.loader", reason="the broker's HOCON loader is not there yet")
    ca = make_ca()
    leaf = make_leaf(ca)
    root = str(tmp_path)
    for listener in ("mqtts", "wss"):
        _write(tmp_path / "certs" / listener / "tls.crt", leaf.cert_pem)
        _write(tmp_path / "certs" / listener / "tls.key", leaf.key_pem(b"pw"))
    _write(tmp_path / "ca" / "mqtts" / "bundle.pem", ca.cert_pem)
    _write(tmp_path / "keypass" / "mqtts" / "password", b"pw\n")
    _write(tmp_path / "admin" / "token", b"t0ken")
    _write(tmp_path / "psk" / "psk.txt", b"device1:c2VjcmV0\n")

    config = loader.load_string(render.render(defaulted_spec(FULL_SPEC), root=root), "rendered")

    assert config.listeners.tcp["mqtt"].bind == "0.0.0.0:1883"
    assert config.listeners.tcp["mqtt"].max_connections == 5000
    ssl = config.listeners.ssl["mqtts"]
    assert ssl.ssl_options.certfile == f"{layout.cert_dir('mqtts', root)}/tls.crt"
    assert ssl.ssl_options.verify == "verify_peer" and ssl.ssl_options.fail_if_no_peer_cert is True
    assert ssl.ssl_options.versions == ["tlsv1.2"] and ssl.ssl_options.depth == 3
    assert ssl.ssl_options.password_file.endswith("keypass/mqtts/password")
    assert ssl.ssl_options.reload_interval == 30.0
    assert ssl.peer_cert_as_username == "cn"
    assert config.listeners.ws["ws"].websocket.mqtt_path == "/ws"
    assert config.listeners.wss["wss"].ssl_options.verify == "verify_none"
    assert config.dashboard.listeners.http.bind == "0.0.0.0:18083"
    assert config.dashboard.token_file == f"{root}/admin/token"
    assert config.prometheus.enable is True and config.prometheus.bind == "0.0.0.0:9184"
    assert config.psk_authentication.enable is True
    assert config.mqtt.max_packet_size == 2 * 1024 * 1024 and config.mqtt.max_qos_allowed == 1
    assert config.log.level == "debug"


PINNED_SPEC = {"listeners": [{"name": "mqtts", "type": "ssl", "port": 8883, "tls": {
    "secretName": "broker-tls", "trustedIssuerCARef": {"name": "issuer-trust", "kind": "ConfigMap"}}}]}


def test_pinned_issuer_ca_replaces_the_secrets_own_ca_crt():
    options = render.config_tree(defaulted_spec(PINNED_SPEC))["listeners"]["ssl"]["mqtts"]["ssl_options"]
    assert options["server_cacertfile"] == "/etc/wharf/issuer-ca/mqtts/ca.crt"
    assert "cacertfile" not in options


def test_broker_refuses_a_wrong_issuers_certificate_against_the_pinned_bundle(tmp_path):
    """The broker's own gate, with the rendered paths: a Secret whose ca.crt is the wrong CA that issued its
    certificate (as an issuer pointed at a wrong CA writes it) is refused; the pinned CA's certificate loads."""
    loader = pytest.importorskip("wharf_broker.config.loader", reason="the broker's HOCON loader is not there yet")
    from wharf_broker.tls import material as broker_material
    from wharf_broker.tls.options import validate_options
    from wharf_broker.tls.validation import UNTRUSTED

    pinned_ca, wrong_ca = make_ca("Pinned CA"), make_ca("Wrong CA")
    good = make_leaf(pinned_ca)
    _write(tmp_path / "certs" / "mqtts" / "tls.crt", good.cert_pem)
    _write(tmp_path / "certs" / "mqtts" / "tls.key", good.key_pem())
    _write(tmp_path / "certs" / "mqtts" / "ca.crt", pinned_ca.cert_pem)
    _write(tmp_path / "issuer-ca" / "mqtts" / "ca.crt", pinned_ca.cert_pem)
    _write(tmp_path / "admin" / "token", b"t0ken")
    config = loader.load_string(render.render(defaulted_spec(PINNED_SPEC), root=str(tmp_path)), "rendered")
    policy = validate_options(config.listeners.ssl["mqtts"].ssl_options)
    assert policy.server_cacertfile == str(tmp_path / "issuer-ca" / "mqtts" / "ca.crt")
    loaded = broker_material.validate_snapshot(policy, broker_material.read_snapshot(policy))
    assert loaded is not None

    wrong = make_leaf(wrong_ca)
    _write(tmp_path / "certs" / "mqtts" / "tls.crt", wrong.cert_pem)
    _write(tmp_path / "certs" / "mqtts" / "tls.key", wrong.key_pem())
    _write(tmp_path / "certs" / "mqtts" / "ca.crt", wrong_ca.cert_pem)
    with pytest.raises(broker_material.TlsConfigError) as refused:
        broker_material.validate_snapshot(policy, broker_material.read_snapshot(policy))
    assert refused.value.reason == UNTRUSTED


def test_default_spec_loads_in_the_broker(tmp_path):
    loader = pytest.importorskip("wharf_broker.config.loader", reason="the broker's HOCON loader is not there yet")
    _write(tmp_path / "admin" / "token", b"t0ken")
    config = loader.load_string(render.render(defaulted_spec({}), root=str(tmp_path)), "rendered")
    assert list(config.listeners.tcp) == ["mqtt"]
    assert config.listeners.tcp["mqtt"].bind == "0.0.0.0:1883"


def test_proxy_protocol_renders_the_trusted_balancers(tmp_path):
    spec = defaulted_spec({"listeners": [
        {"name": "lb", "type": "tcp", "port": 1883, "proxyProtocol": True,
         "proxyProtocolTrustedCIDRs": ["10.0.0.0/8", "2001:db8::/64"]},
        {"name": "plain", "type": "ws", "port": 8083}]})
    tree = render.config_tree(spec)
    assert tree["listeners"]["tcp"]["lb"]["proxy_protocol"] is True
    assert tree["listeners"]["tcp"]["lb"]["proxy_protocol_trusted_cidrs"] == ["10.0.0.0/8", "2001:db8::/64"]
    assert "proxy_protocol_trusted_cidrs" not in tree["listeners"]["ws"]["plain"]
    # The broker loads what was rendered.
    loader = pytest.importorskip("wharf_broker.config.loader")
    _write(tmp_path / "admin" / "token", b"t0ken")
    config = loader.load_string(render.render(spec, root=str(tmp_path)), "rendered")
    assert config.listeners.tcp["lb"].proxy_protocol_trusted_cidrs == ["10.0.0.0/8", "2001:db8::/64"]


@pytest.mark.parametrize("listener, message", [
    ({"name": "lb", "type": "tcp", "port": 1883, "proxyProtocol": True}, "proxyProtocol needs the load balancers"),
    ({"name": "lb", "type": "tcp", "port": 1883, "proxyProtocol": True, "proxyProtocolTrustedCIDRs": ["10.0.0.0/40"]},
     "'10.0.0.0/40' is not an IP address or network"),
])
def test_proxy_protocol_without_valid_balancers_is_a_render_error(listener, message):
    with pytest.raises(render.RenderError, match=message):
        render.config_tree(defaulted_spec({"listeners": [listener]}))
