"""The loader's checks of the access-control keys: required paths, existing files, positive limits, URLs."""

from __future__ import annotations

import pytest

from wharf_broker.config.errors import ConfigError
from wharf_broker.config.loader import load_string


def test_access_control_keys_bind(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("")
    acl = tmp_path / "acl.conf"
    acl.write_text("{allow, all}.\n")
    config = load_string(f"""
authentication {{
  allow_anonymous = false
  chain = [http, password_file]
  password_file {{ enable = true, path = "{users}", reload_interval = 5s }}
  http {{ enable = true, url = "http://127.0.0.1:9/auth", request_timeout = 2s, cache_ttl = 0 }}
}}
authorization {{ no_match = deny, deny_action = disconnect, cache {{ max_size = 8, ttl = 30s }},
                 file {{ enable = true, path = "{acl}" }} }}
flapping_detect {{ enable = true, max_count = 5, window_time = 10s, ban_time = 1m }}
mqtt.max_send_buffer = 4MB
""", "t")
    assert config.authentication.chain == ["http", "password_file"]
    assert config.authentication.password_file.reload_interval == 5.0
    assert config.authentication.http.cache_ttl == 0
    assert config.authorization.deny_action == "disconnect" and config.authorization.cache.ttl == 30.0
    assert config.flapping_detect.ban_time == 60.0
    assert config.mqtt.max_send_buffer == 4 * 1024 * 1024


def test_defaults():
    config = load_string("", "t")
    assert config.authentication.allow_anonymous is True  # the embedded local default
    assert config.authorization.no_match == "allow" and not config.authorization.file.enable
    assert not config.flapping_detect.enable


@pytest.mark.parametrize("text, message", [
    ("authentication.password_file { enable = true }", "authentication.password_file.path: is required"),
    ('authorization.file { enable = true, path = "/nonexistent/acl.conf" }', "not found"),
    ('authentication.http { enable = true, url = "ftp://x" }', "must be an http:// or https:// URL"),
    ("authentication.http.pool_size = 0", "pool_size must be at least 1"),
    ("flapping_detect.max_count = 0", "must be positive"),
    ("authorization.cache.max_size = 0", "must be at least 1"),
    ("authorization.no_match = maybe", "no_match"),
    ("authentication.chain = [ldap]", "chain"),
])
def test_bad_values_are_reported(text, message):
    with pytest.raises(ConfigError, match=message):
        load_string(text, "t")
