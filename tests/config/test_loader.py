"""The loader: binding onto the typed model, value types, errors (all at once, with positions), checks."""

from __future__ import annotations

import pytest

from wharf_broker.config import loader
from wharf_broker.config.errors import ConfigError
from wharf_broker.config.loader import (bind_ssl_options, embedded_default, load_file, load_string, parse_bind,
                                        parse_bytesize, parse_duration)
from wharf_broker.config.model import BrokerConfig, SslListener, SslOptions, TcpListener

from .test_hocon import EMQX_ONE_WAY, ISSUE_MUTUAL, ISSUE_TCP


def errors_of(text: str, source: str = "t.conf") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_string(text, source)
    return [str(issue) for issue in info.value.issues]


@pytest.fixture
def in_repo(monkeypatch, certs):
    """Relative certificate paths resolve from the checkout root (where etc/certs lives)."""
    monkeypatch.chdir(certs.parent.parent)
    return certs


def test_empty_config_is_all_defaults():
    assert load_string("") == BrokerConfig()


def test_seed_snippets_bind(in_repo):
    one_way = load_string(EMQX_ONE_WAY).listeners.ssl["default"]
    assert isinstance(one_way, SslListener)
    assert one_way.bind == "0.0.0.0:8883" and one_way.max_connections == 512000
    assert one_way.ssl_options.verify == "verify_none"
    assert one_way.ssl_options.certfile == str(in_repo / "server.crt")  # resolved to an absolute path
    mutual = load_string(ISSUE_MUTUAL).listeners.ssl["default"].ssl_options
    assert (mutual.verify, mutual.fail_if_no_peer_cert) == ("verify_peer", True)
    assert mutual.versions == ["tlsv1.3", "tlsv1.2"]  # EMQX's default
    tcp = load_string(ISSUE_TCP).listeners.tcp["default"]
    assert isinstance(tcp, TcpListener) and tcp.max_connections == 1024000


@pytest.mark.parametrize("text, seconds", [
    ("120s", 120.0), ("2h", 7200.0), ("500ms", 0.5), ("1h30m", 5400.0), ("15", 15.0), ("1.5", 1.5), ("3d", 259200.0),
    ('"45s"', 45.0), ("0", 0.0),
])
def test_durations(text, seconds):
    assert load_string(f"mqtt.idle_timeout = {text}").mqtt.idle_timeout == seconds


@pytest.mark.parametrize("text, size", [
    ("1MB", 1024 * 1024), ("64KB", 65536), ("4096", 4096), ("2mb", 2 * 1024 * 1024), ('"10KB"', 10240), ("1GB", 2**30),
])
def test_byte_sizes(text, size):
    if size > 268435455:
        assert parse_bytesize(text) == size
    else:
        assert load_string(f"mqtt.max_packet_size = {text}").mqtt.max_packet_size == size


def test_limits():
    config = load_string("""
        listeners.tcp.a { bind = "127.0.0.1:0", max_connections = infinity }
        listeners.tcp.b { bind = "127.0.0.1:0", max_connections = 5, max_conn_rate = 100 }
        mqtt.max_mqueue_len = "infinity"
    """)
    assert config.listeners.tcp["a"].max_connections is None
    assert config.listeners.tcp["b"].max_connections == 5
    assert config.listeners.tcp["b"].max_conn_rate == 100
    assert config.mqtt.max_mqueue_len is None


def test_literals_lists_optionals_and_scalars():
    config = load_string("""
        node.event_loop = asyncio
        log { level = "debug", format = json }
        mqtt { retain_available = false, keepalive_multiplier = 2, response_information = 42,
               peer_cert_as_username = cn }
        listeners.ssl.x { enable = false, bind = ":0", peer_cert_as_clientid = md5,
                          ssl_options { versions = [tlsv1.2],
                                        ciphers = "ECDHE-RSA-AES128-GCM-SHA256,TLS_AES_128_GCM_SHA256" } }
        listeners.tcp.y { bind = ":0", peer_cert_as_clientid = null }
    """)
    assert config.node.event_loop == "asyncio"
    assert (config.log.level, config.log.format) == ("debug", "json")
    assert config.mqtt.retain_available is False
    assert config.mqtt.keepalive_multiplier == 2.0 and isinstance(config.mqtt.keepalive_multiplier, float)
    assert config.mqtt.response_information == "42"
    assert config.mqtt.peer_cert_as_username == "cn"
    ssl = config.listeners.ssl["x"]
    assert ssl.peer_cert_as_clientid == "md5"
    assert ssl.ssl_options.versions == ["tlsv1.2"]
    assert ssl.ssl_options.ciphers == ["ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"]
    assert config.listeners.tcp["y"].peer_cert_as_clientid is None


def test_unknown_key_with_suggestion():
    [error] = errors_of('listeners.tcp.default {\n  bind = ":0"\n  max_conections = 10\n}')
    assert error.startswith("t.conf:3:3: listeners.tcp.default.max_conections: unknown key 'max_conections'")
    assert "did you mean 'max_connections'?" in error


def test_unknown_top_level_and_listener_type():
    errors = errors_of("mqttt.max_qos_allowed = 1\nlisteners.quic.default.bind = \":0\"")
    assert any("t.conf:1:1: mqttt: unknown key 'mqttt' at the top level (did you mean 'mqtt'?)" in e for e in errors)
    assert any("t.conf:2:1: listeners.quic: unknown key 'quic' in listeners" in e for e in errors)


def test_bad_values_are_all_reported_at_once():
    errors = errors_of("""listeners.tcp.default {
  bind = "127.0.0.1:0"
  max_connections = lots
  enable = maybe
}
mqtt {
  idle_timeout = 5x
  max_packet_size = huge
  max_qos_allowed = 3
  mqueue_drop_policy = drop_oldst
  max_inflight = -1
}
listeners.ssl.s.ssl_options.verify = verify_pear
""")
    assert errors == [
        "t.conf:3:21: listeners.tcp.default.max_connections: expected a whole number or infinity, got 'lots'",
        "t.conf:4:12: listeners.tcp.default.enable: expected true or false, got 'maybe'",
        "t.conf:7:18: mqtt.idle_timeout: expected a duration like 15s, 2h or 500ms, got '5x'",
        "t.conf:8:21: mqtt.max_packet_size: expected a size like 1MB, 64KB or a number of bytes, got 'huge'",
        "t.conf:9:21: mqtt.max_qos_allowed: must be 0, 1 or 2, not 3",
        "t.conf:10:24: mqtt.mqueue_drop_policy: 'drop_oldst' is not one of drop_oldest, drop_newest "
        "(did you mean drop_oldest?)",
        "t.conf:11:18: mqtt.max_inflight: must be in 1..65535",
        # The ssl listener's missing files are reported in the same round.
        "t.conf:13:1: listeners.ssl.s.ssl_options.certfile: is required for a TLS listener",
        "t.conf:13:1: listeners.ssl.s.ssl_options.keyfile: is required for a TLS listener",
        "t.conf:13:38: listeners.ssl.s.ssl_options.verify: 'verify_pear' is not one of verify_none, verify_peer "
        "(did you mean verify_peer?)",
    ]


def test_wrong_shapes():
    errors = errors_of('mqtt = 5\nlisteners.tcp = [1]\nnode { name = {a = 1} }')
    assert "t.conf:1:8: mqtt: expected an object, got '5'" in errors
    assert "t.conf:2:17: listeners.tcp: expected an object, got an array" in errors
    assert "t.conf:3:15: node.name: expected a string, got an object" in errors


def test_config_error_message_lists_every_issue():
    with pytest.raises(ConfigError) as info:
        load_string("a = 1\nb = 2", "x.conf")
    message = str(info.value)
    assert message.startswith("invalid config (2 errors):")
    assert "x.conf:1:1: a: unknown key 'a'" in message and "x.conf:2:1: b: unknown key 'b'" in message


@pytest.mark.parametrize("text, expected", [
    ("0.0.0.0:1883", ("0.0.0.0", 1883)), (":1883", ("", 1883)), ("1883", ("", 1883)),
    ("[::]:8883", ("::", 8883)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80)),
])
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["0.0.0.0", "1.2.3.4:99999", "::1:80", "[nothost]:1", "host:port", ""])
def test_parse_bind_rejects(text):
    with pytest.raises(ValueError):
        parse_bind(text)


def test_bad_bind_in_config():
    [error] = errors_of('listeners.tcp.default.bind = "0.0.0.0"')
    assert error.startswith("t.conf:1:30: listeners.tcp.default.bind: bind '0.0.0.0' is not host:port")


def test_two_enabled_listeners_on_one_port():
    errors = errors_of("""
        listeners.tcp.a.bind = "0.0.0.0:1883"
        listeners.tcp.b.bind = "127.0.0.1:1883"
        listeners.ws.c.bind = ":1883"
        listeners.tcp.off { bind = "0.0.0.0:1883", enable = false }
        listeners.tcp.other.bind = "127.0.0.1:1884"
        listeners.tcp.e1.bind = "127.0.0.1:0"
        listeners.tcp.e2.bind = "127.0.0.1:0"
    """)
    assert errors == [
        "t.conf:3:32: listeners.tcp.b.bind: port 1883 is already bound by listeners.tcp.a",
        "t.conf:4:31: listeners.ws.c.bind: port 1883 is already bound by listeners.tcp.a",
    ]


def test_dashboard_beyond_loopback_needs_a_token(tmp_path):
    [error] = errors_of('dashboard.listeners.http.bind = "0.0.0.0:18083"')
    assert "dashboard.listeners.http.bind" in error and "dashboard.token" in error
    load_string('dashboard { listeners.http.bind = "0.0.0.0:18083", token = "s3cret" }')
    load_string('dashboard.listeners.http.bind = "[::1]:18083"')
    load_string('dashboard { enable = false, listeners.http.bind = "0.0.0.0:18083" }')
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    config = load_string(f'dashboard {{ listeners.http.bind = "0.0.0.0:0", token_file = "{token_file}" }}')
    assert config.dashboard.token_file == str(token_file)
    [missing] = errors_of(f'dashboard.token_file = "{tmp_path}/none"')
    assert "dashboard.token_file: file" in missing and "not found" in missing


def test_ssl_listener_requirements(in_repo):
    errors = errors_of("""
        listeners.ssl.a { bind = "127.0.0.1:0", ssl_options { verify = verify_peer } }
        listeners.ssl.b { bind = "127.0.0.1:0", ssl_options { certfile = "etc/certs/server.crt",
                                                              keyfile = "etc/certs/nope.key",
                                                              fail_if_no_peer_cert = true,
                                                              versions = [] } }
    """)
    text = "\n".join(errors)
    assert "listeners.ssl.a.ssl_options.certfile: is required for a TLS listener" in text
    assert "listeners.ssl.a.ssl_options.keyfile: is required for a TLS listener" in text
    assert "listeners.ssl.a.ssl_options.cacertfile: is required with verify = verify_peer" in text
    assert "listeners.ssl.b.ssl_options.keyfile: file 'etc/certs/nope.key' not found (looked in" in text
    assert "listeners.ssl.b.ssl_options.fail_if_no_peer_cert: needs verify = verify_peer" in text
    assert "listeners.ssl.b.ssl_options.versions: must name at least one TLS version" in text
    # A disabled listener is not checked.
    load_string('listeners.ssl.off { enable = false, ssl_options.keyfile = "missing" }')


def test_ssl_options_rules_the_tls_layer_used_to_find_only_at_start_are_load_errors(in_repo):
    """One table of rules (config/tls_rules.py): what the TLS layer refuses, the file is refused for at load."""
    errors = errors_of("""
        listeners.ssl.c { bind = "127.0.0.1:0", ssl_options { certfile = "etc/certs/server.crt",
                                                              keyfile = "etc/certs/server.key",
                                                              depth = 1000, enable_crl_check = true,
                                                              ciphers = "TLS_AES_256_GCM_SHA384,TLS_NOPE" } }
    """)
    assert {error.split(": ", 1)[1] for error in errors} == {
        "listeners.ssl.c.ssl_options.enable_crl_check: needs verify = verify_peer",
        "listeners.ssl.c.ssl_options.ciphers: unknown TLS 1.3 suite 'TLS_NOPE' (known: TLS_AES_128_CCM_8_SHA256, "
        "TLS_AES_128_CCM_SHA256, TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256)",
        "listeners.ssl.c.ssl_options.depth: must be between 0 and 100, not 1000",
    }
    assert all(error.startswith("t.conf:") for error in errors)  # each at its file:line:col


def test_relative_paths_resolve_under_wharf_home(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    for name in ("k.pem", "c.pem"):
        (tmp_path / "etc" / name).write_text("x")
    monkeypatch.setenv("WHARF_HOME", str(tmp_path))
    config = load_string('listeners.ssl.a { bind = ":0", ssl_options { keyfile = "etc/k.pem", '
                         'certfile = "etc/c.pem" } }')
    assert config.listeners.ssl["a"].ssl_options.keyfile == str(tmp_path / "etc" / "k.pem")


def test_websocket_checks():
    errors = errors_of('listeners.ws.a { bind = ":0", websocket { mqtt_path = "mqtt", supported_subprotocols = [] } }')
    assert any("websocket.mqtt_path: must start with '/'" in e for e in errors)
    assert any("websocket.supported_subprotocols: must name at least one" in e for e in errors)


def test_listener_names():
    [error] = errors_of('listeners.tcp."bad name".bind = ":0"')
    assert "listener name 'bad name'" in error


@pytest.fixture
def default_pki(monkeypatch, tmp_path):
    """A state directory in tmp_path holding the embedded default's generated certificates."""
    from wharf_broker.tls import localpki

    monkeypatch.setenv("WHARF_HOME", str(tmp_path / "state"))
    return localpki.ensure()


def test_embedded_default(monkeypatch, tmp_path, default_pki):
    monkeypatch.chdir(tmp_path)
    config = embedded_default()
    assert config.listeners.tcp["default"].bind == "0.0.0.0:1883"
    assert config.listeners.ws["default"].bind == "0.0.0.0:8083"
    assert config.listeners.wss["default"].bind == "0.0.0.0:8084"
    ssl = config.listeners.ssl["default"]
    assert ssl.bind == "0.0.0.0:8883"
    assert ssl.ssl_options.verify == "verify_peer" and ssl.ssl_options.fail_if_no_peer_cert is False
    # The generated PKI in the state directory, never a certificate from the checkout.
    for options in (ssl.ssl_options, config.listeners.wss["default"].ssl_options):
        assert options.certfile == str(default_pki.server[0])
        assert options.keyfile == str(default_pki.server[1])
        assert options.cacertfile == str(default_pki.ca)
    assert config.dashboard.listeners.http.bind == "127.0.0.1:18083"
    # Dashboard uploads go to the state directory too, not to the working directory.
    assert config.dashboard.upload_dir == str(default_pki.directory.parent / "uploads")
    assert config.authentication.allow_anonymous is True


def test_embedded_default_binds_come_from_the_environment(monkeypatch, default_pki):
    monkeypatch.setenv("WHARF_TCP_BIND", "127.0.0.1:0")
    monkeypatch.setenv("WHARF_DASHBOARD_BIND", "127.0.0.1:0")
    config = embedded_default()
    assert config.listeners.tcp["default"].bind == "127.0.0.1:0"
    assert config.dashboard.listeners.http.bind == "127.0.0.1:0"


def test_embedded_default_metrics_port_is_off_unless_asked(monkeypatch, default_pki):
    monkeypatch.delenv("WHARF_METRICS", raising=False)
    monkeypatch.delenv("WHARF_METRICS_BIND", raising=False)
    assert embedded_default().prometheus.enable is False
    monkeypatch.setenv("WHARF_METRICS", "true")
    monkeypatch.setenv("WHARF_METRICS_BIND", "127.0.0.1:0")
    config = embedded_default()
    assert config.prometheus.enable is True and config.prometheus.bind == "127.0.0.1:0"


def test_embedded_default_admin_api_beyond_loopback_needs_the_token_variable(monkeypatch, default_pki):
    monkeypatch.setenv("WHARF_DASHBOARD_BIND", "0.0.0.0:18083")
    monkeypatch.delenv("WHARF_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="set dashboard.token"):
        embedded_default()
    monkeypatch.setenv("WHARF_DASHBOARD_TOKEN", "from-the-environment")
    assert embedded_default().dashboard.token == "from-the-environment"


def test_embedded_default_without_certificates(monkeypatch, tmp_path):
    """The checkout's etc/certs are not a fallback: without the generated files the default does not load."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WHARF_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as info:
        embedded_default()
    assert ("listeners.ssl.default.ssl_options.certfile: file '${WHARF_STATE_DIR}/certs/server.crt' not found "
            f"(that is {tmp_path}/empty/certs/server.crt)") in str(info.value)
    assert "default.conf:" in str(info.value)


def test_state_dir_order(monkeypatch, tmp_path):
    """$WHARF_HOME, else $XDG_STATE_HOME/wharf (when absolute, as the XDG spec says), else ~/.local/state/wharf."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WHARF_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert loader.state_dir() == tmp_path / "home" / ".local" / "state" / "wharf"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    assert loader.state_dir() == tmp_path / "home" / ".local" / "state" / "wharf"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert loader.state_dir() == tmp_path / "xdg" / "wharf"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WHARF_HOME", "relative-home")
    assert loader.state_dir() == tmp_path / "relative-home"


def test_state_dir_placeholder_in_any_path(monkeypatch, tmp_path):
    (tmp_path / "acl.conf").write_text("{allow, all}.\n")
    monkeypatch.setenv("WHARF_HOME", str(tmp_path))
    config = load_string('authorization.file { enable = true, path = "${WHARF_STATE_DIR}/acl.conf" }')
    assert config.authorization.file.path == str(tmp_path / "acl.conf")


def test_load_file(tmp_path):
    path = tmp_path / "broker.conf"
    path.write_text('listeners.tcp.default.bind = "127.0.0.1:0"\nmqtt.max_qos_allowed = 7\n')
    with pytest.raises(ConfigError, match=rf"{path}:2:24: mqtt.max_qos_allowed"):
        load_file(path)


def test_bind_ssl_options_merges_and_validates(in_repo):
    current = load_string(ISSUE_MUTUAL).listeners.ssl["default"].ssl_options
    updated = bind_ssl_options({"verify": "verify_none", "fail_if_no_peer_cert": False, "depth": 3,
                                "ocsp": {"refresh_interval": "10m"}}, current, "listeners.ssl.default.ssl_options")
    assert updated.verify == "verify_none" and updated.depth == 3 and updated.ocsp.refresh_interval == 600.0
    assert updated.certfile == current.certfile
    assert current.verify == "verify_peer"  # the current options are untouched
    with pytest.raises(ConfigError) as info:
        bind_ssl_options({"verify": "sometimes", "depht": 1}, current, "listeners.ssl.default.ssl_options")
    text = str(info.value)
    assert "listeners.ssl.default.ssl_options.verify: 'sometimes' is not one of" in text
    assert "unknown key 'depht'" in text and "did you mean 'depth'?" in text
    with pytest.raises(ConfigError, match="certfile: file 'nope.crt' not found"):
        bind_ssl_options({"certfile": "nope.crt"}, current, "listeners.ssl.default.ssl_options")


def test_duration_and_size_parsers_reject():
    for bad in ("", "s", "-5s", "1y", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad in ("", "MB", "1.5MB", "-1", False):
        with pytest.raises(ValueError):
            parse_bytesize(bad)
    assert isinstance(SslOptions().handshake_timeout, float)


def test_issue_14_limits_bind_with_their_defaults_and_errors_name_the_key():
    config = load_string("""
mqtt { max_user_properties = 10, connect_max_packet_size = 16KB, max_subscriptions = infinity }
retainer { max_retained_messages = 5, max_payload_size = 1KB, max_retained_bytes = 1MB }
authentication.login_throttle { allowed_failures = 5, initial_backoff = 500ms, max_backoff = 30s }
authentication.password_file.hash_workers = 4
flapping_detect.address_max_count = 0
""")
    assert (config.mqtt.max_user_properties, config.mqtt.connect_max_packet_size) == (10, 16384)
    assert config.mqtt.max_subscriptions is None and config.mqtt.connect_max_user_properties == 32
    assert (config.retainer.max_retained_messages, config.retainer.max_payload_size) == (5, 1024)
    throttle = config.authentication.login_throttle
    assert (throttle.allowed_failures, throttle.initial_backoff, throttle.max_backoff) == (5, 0.5, 30.0)
    assert config.authentication.password_file.hash_workers == 4 and config.flapping_detect.address_max_count == 0
    defaults = BrokerConfig()
    assert defaults.mqtt.max_subscriptions == 1000 and defaults.retainer.max_retained_messages == 100000
    assert SslOptions().client_renegotiation is False

    errors = " | ".join(errors_of("""
mqtt { max_user_properties = -1, connect_max_properties_size = 0, max_subscriptions = 0 }
retainer { max_retained_messages = 0, max_payload_size = 0 }
authentication.login_throttle { initial_backoff = 10s, max_backoff = 1s, max_pending_checks = 0 }
authentication.password_file.hash_queue_size = 0
flapping_detect.address_max_count = -1
"""))
    for key in ("mqtt.max_user_properties", "mqtt.connect_max_properties_size", "mqtt.max_subscriptions",
                "retainer.max_retained_messages", "retainer.max_payload_size",
                "authentication.login_throttle.max_backoff", "authentication.login_throttle.max_pending_checks",
                "authentication.password_file.hash_queue_size", "flapping_detect.address_max_count"):
        assert key in errors, key


def test_max_keepalive_and_topic_alias_out_bind_and_validate():
    config = load_string('mqtt.max_keepalive = 120\nlisteners.tcp.a { bind = "127.0.0.1:0", topic_alias_out = on }',
                         "k.conf")
    assert config.mqtt.max_keepalive == 120 and config.listeners.tcp["a"].topic_alias_out == "on"
    defaults = load_string('listeners.tcp.a.bind = "127.0.0.1:0"', "d.conf")
    assert defaults.mqtt.max_keepalive is None and defaults.listeners.tcp["a"].topic_alias_out == "off"
    assert any("mqtt.max_keepalive: must be in 1..65535" in issue for issue in errors_of("mqtt.max_keepalive = 0"))
    assert any("topic_alias_out: 'yes' is not one of off, on" in issue
               for issue in errors_of('listeners.tcp.a { bind = "127.0.0.1:0", topic_alias_out = yes }'))
