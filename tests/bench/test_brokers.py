"""The broker configs the harness writes: same listeners everywhere, and Wharf's accepted by Wharf itself."""

import json
import subprocess
import sys

from bench.brokers import REPO_ROOT, amqtt_config, mosquitto_config, wharf_config
from bench.pki import create_pki

PORTS = {"plain": 21001, "tls": 21002, "mtls": 21003}


def test_mosquitto_has_three_loopback_listeners_and_no_queue_limit(tmp_path):
    pki = create_pki(tmp_path)
    text = mosquitto_config(PORTS, pki)
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("listener ")] == [
        "listener 21001 127.0.0.1", "listener 21002 127.0.0.1", "listener 21003 127.0.0.1"]
    assert "max_queued_messages 0" in lines
    # require_certificate only on the mutual listener, which comes last
    assert lines.index("require_certificate true") > lines.index("listener 21003 127.0.0.1")
    assert lines.count("tls_version tlsv1.3") == 2


def test_amqtt_config_is_valid_yaml_json(tmp_path):
    pki = create_pki(tmp_path)
    config = json.loads(amqtt_config(PORTS, pki))
    listeners = config["listeners"]
    assert listeners["default"]["bind"] == "127.0.0.1:21001"
    assert listeners["tls"]["ssl"] is True and "cafile" not in listeners["tls"]
    assert listeners["mtls"]["cafile"] == str(pki.ca_cert)
    assert list(config["plugins"]) == ["amqtt.plugins.authentication.AnonymousAuthPlugin"]


def test_wharf_accepts_the_config_it_is_given(tmp_path):
    pki = create_pki(tmp_path / "pki")
    path = tmp_path / "wharf.conf"
    path.write_text(wharf_config(PORTS, pki, 21004))
    check = subprocess.run([sys.executable, "-m", "wharf_broker", "--config", str(path), "--check-config"],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    assert "tcp:default (127.0.0.1:21001)" in check.stdout
    assert "ssl:default (127.0.0.1:21002)" in check.stdout
    assert "ssl:mutual (127.0.0.1:21003)" in check.stdout
    assert "ws:" not in check.stdout and "wss:" not in check.stdout
