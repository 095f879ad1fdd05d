"""``wharf-broker`` as a real process: --check-config, bad configs, the embedded default, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest


def run_cli(*args: str, cwd=None, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wharf_broker", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def test_check_config_accepts_a_good_file(tmp_path):
    config = tmp_path / "ok.conf"
    config.write_text('listeners.tcp.default { bind = "0.0.0.0:1883", max_connections = 1024000 }\n'
                      'listeners.ws.web { bind = "127.0.0.1:8083", enable = false }\n')
    result = run_cli("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
    assert f"config OK: {config}" in result.stdout
    assert "tcp:default (0.0.0.0:1883)" in result.stdout
    assert "ws:web" not in result.stdout  # disabled
    assert "metrics" not in result.stdout  # the metrics port is off unless enabled


def test_check_config_names_the_metrics_port(tmp_path):
    config = tmp_path / "broker.conf"
    config.write_text('listeners.tcp.default.bind = "127.0.0.1:1883"\n'
                      'prometheus { enable = true, bind = "127.0.0.1:9184" }\n')
    result = run_cli("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "metrics (read-only, no token): 127.0.0.1:9184" in result.stdout


def test_check_config_on_the_embedded_default(tmp_path):
    home = tmp_path / "state"
    result = run_cli("--check-config", cwd=tmp_path, env={"WHARF_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    for expected in ("tcp:default (0.0.0.0:1883)", "ssl:default (0.0.0.0:8883)", "ws:default (0.0.0.0:8083)",
                     "wss:default (0.0.0.0:8084)", "admin api: 127.0.0.1:18083",
                     f"generated a local CA {home}/certs/rootCA.crt", f"trust the CA {home}/certs/rootCA.crt",
                     f"client certificate {home}/certs/client.crt and key {home}/certs/client.key"):
        assert expected in result.stdout
    # The check loaded the material the broker will serve; a second check reuses it.
    again = run_cli("--check-config", cwd=tmp_path, env={"WHARF_HOME": str(home)})
    assert again.returncode == 0, again.stderr
    assert "generated a " not in again.stdout and f"trust the CA {home}/certs/rootCA.crt" in again.stdout


def test_embedded_default_cannot_write_its_state_directory(tmp_path):
    """An unwritable state directory is one line and exit 1, not a traceback."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = run_cli("--check-config", cwd=tmp_path, env={"WHARF_HOME": str(blocker)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"wharf-broker: cannot keep the embedded default's certificates in {blocker}")
    assert "set WHARF_HOME to a writable directory" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_explicit_config_never_generates_certificates(tmp_path):
    """--config with certificate paths of its own: missing files are an error, nothing is made."""
    home = tmp_path / "state"
    config = tmp_path / "tls.conf"
    config.write_text('listeners.ssl.x { bind = "127.0.0.1:0", ssl_options { certfile = "${WHARF_STATE_DIR}/certs/'
                      'server.crt", keyfile = "${WHARF_STATE_DIR}/certs/server.key" } }\n')
    result = run_cli("--config", str(config), "--check-config", cwd=tmp_path, env={"WHARF_HOME": str(home)})
    assert result.returncode == 2
    assert (f"listeners.ssl.x.ssl_options.certfile: file '${{WHARF_STATE_DIR}}/certs/server.crt' not found "
            f"(that is {home}/certs/server.crt)") in result.stderr
    assert not home.exists()


def test_bad_config_exits_2_naming_every_problem(tmp_path):
    config = tmp_path / "bad.conf"
    config.write_text('listeners.tcp.default {\n  bind = "127.0.0.1:0"\n  max_conections = 10\n}\n'
                      'mqtt.max_qos_allowed = 5\n')
    for extra in ((), ("--check-config",)):
        result = run_cli("--config", str(config), *extra)
        assert result.returncode == 2
        assert f"{config}:3:3: listeners.tcp.default.max_conections: unknown key 'max_conections'" in result.stderr
        assert "did you mean 'max_connections'?" in result.stderr
        assert f"{config}:5:24: mqtt.max_qos_allowed: must be 0, 1 or 2, not 5" in result.stderr
        assert "listener" not in result.stdout  # nothing started


def test_syntax_error_and_missing_file(tmp_path):
    config = tmp_path / "broken.conf"
    config.write_text('listeners.tcp.default {\n  bind = "127.0.0.1:0"\n')
    result = run_cli("--config", str(config))
    assert result.returncode == 2
    assert f"{config}:3:1: missing '}}' before end of file" in result.stderr
    result = run_cli("--config", str(tmp_path / "nope.conf"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_bad_arguments():
    result = run_cli("--log-level", "loud")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_port_in_use_exits_1_and_says_why(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    config = tmp_path / "taken.conf"
    config.write_text(f'listeners.tcp.default.bind = "127.0.0.1:{port}"\ndashboard.enable = false\n')
    try:
        result = run_cli("--config", str(config))
    finally:
        blocker.close()
    assert result.returncode == 1
    assert f"listener tcp:default cannot bind 127.0.0.1:{port}" in result.stderr


def test_embedded_default_starts(broker_process, tmp_path):
    """No --config: the embedded default, with its binds moved to ephemeral loopback ports from the environment."""
    env = {f"WHARF_{kind}_BIND": "127.0.0.1:0" for kind in ("TCP", "SSL", "WS", "WSS", "DASHBOARD")}
    broker = broker_process(None, env=env)
    assert set(broker.ports) >= {"tcp:default", "ssl:default", "ws:default", "wss:default"}
    status, body = broker.admin("GET", "/readyz")
    assert status == 200
    received = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="default-check")
    client.on_message = lambda c, u, message: received.append(message.payload)
    client.connect("127.0.0.1", broker.port("tcp:default"))
    client.loop_start()
    try:
        client.subscribe("check/#", qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not received:
            client.publish("check/1", b"hello", qos=1)
            time.sleep(0.2)
        assert b"hello" in received
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_gracefully(broker_process, signum):
    broker = broker_process()
    disconnects = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"graceful-{signum}",
                         protocol=mqtt.MQTTv5)
    client.on_disconnect = lambda c, u, flags, reason, props: disconnects.append(reason)
    client.connect("127.0.0.1", broker.port("tcp:default"))
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.is_connected()
        assert broker.stop(signum) == 0
        deadline = time.monotonic() + 10
        while not disconnects and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
    # A 5.0 client hears why: DISCONNECT with "Server shutting down" (0x8B).
    assert disconnects and disconnects[0].value == 0x8B, disconnects
    log = broker.log
    assert ("SIGTERM" if signum == signal.SIGTERM else "SIGINT") + ": shutting down" in log
    assert "listener tcp:default stopped" in log and "broker stopped" in log
    assert "Traceback" not in log


def test_sighup_reloads_tls_listeners(broker_process, tmp_path):
    pytest.importorskip("wharf_broker.tls")
    import hashlib
    import ssl

    from wharf_broker.tls.devpki import CertificateAuthority

    root = CertificateAuthority("SIGHUP Test CA")

    def write_pair(directory):
        issued = root.issue("localhost", server=True, sans=["localhost", "127.0.0.1"])
        (directory / "server.crt").write_bytes(issued.cert_pem())
        (directory / "server.key").write_bytes(issued.key_pem())
        return issued.fingerprint

    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    first = write_pair(cert_dir)
    broker = broker_process(f"""
        listeners.ssl.a {{ bind = "127.0.0.1:0", ssl_options {{ certfile = "{cert_dir}/server.crt" }} }}
        listeners.ssl.a.ssl_options.keyfile = "{cert_dir}/server.key"
        listeners.ssl.b {{ bind = "127.0.0.1:0", ssl_options = ${{listeners.ssl.a.ssl_options}} }}
        dashboard.listeners.http.bind = "127.0.0.1:0"
    """)

    def served(listener_id: str) -> str:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only looking at what is served
        with socket.create_connection(("127.0.0.1", broker.port(listener_id)), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    assert served("ssl:a") == served("ssl:b") == first
    second = write_pair(cert_dir)
    start = len(broker.log)
    broker.send_signal(signal.SIGHUP)
    broker.wait_for_log(r"SIGHUP: reloading certificates of every TLS listener", start=start)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (served("ssl:a"), served("ssl:b")) != (second, second):
        time.sleep(0.1)
    assert served("ssl:a") == served("ssl:b") == second
    assert broker.running()


def test_log_level_and_json_format(broker_process):
    broker = broker_process('listeners.tcp.default.bind = "127.0.0.1:0"\n'
                            'dashboard.listeners.http.bind = "127.0.0.1:0"\nlog.format = json\n',
                            args=["--log-level", "debug"])
    import json
    lines = [json.loads(line) for line in broker.log.splitlines() if line.startswith("{")]
    assert any(entry["msg"].startswith("listener tcp:default on 127.0.0.1:") for entry in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)


def test_check_config_loads_tls_material(tmp_path, certs):
    pytest.importorskip("wharf_broker.tls")
    config = tmp_path / "tls.conf"
    config.write_text(f'listeners.ssl.x {{ bind = "127.0.0.1:0", ssl_options {{ certfile = "{certs}/client.crt",'
                      f' keyfile = "{certs}/server.key" }} }}\n')
    result = run_cli("--config", str(config), "--check-config")
    assert result.returncode == 2
    assert "listeners.ssl.x.ssl_options: keyfile does not match" in result.stderr
    config.write_text(f'listeners.ssl.x {{ bind = "127.0.0.1:0", ssl_options {{ certfile = "{certs}/server.crt",'
                      f' keyfile = "{certs}/server.key" }} }}\n')
    result = run_cli("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr


def test_embedded_default_serves_one_way_and_mutual_tls(broker_process, tmp_path):
    """The README's promise: the default config serves TLS to clients with and without a certificate, with the
    CA and client certificate it generated on its first start (and logged)."""
    pytest.importorskip("wharf_broker.tls")
    import shutil
    import ssl

    certs = tmp_path / "wharf-home" / "certs"
    env = {f"WHARF_{kind}_BIND": "127.0.0.1:0" for kind in ("TCP", "SSL", "WS", "WSS", "DASHBOARD")}
    broker = broker_process(None, env={**env, "WHARF_HOME": str(certs.parent)})
    assert f"trust the CA {certs}/rootCA.crt; client certificate {certs}/client.crt and key {certs}/client.key" \
        in broker.log
    port = broker.port("ssl:default")

    def handshake(with_cert: bool, cert_dir=certs) -> bytes:
        """CONNECT over TLS; the first bytes the broker answers with."""
        context = ssl.create_default_context(cafile=str(certs / "rootCA.crt"))
        if with_cert:
            context.load_cert_chain(str(cert_dir / "client.crt"), str(cert_dir / "client.key"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                client_id = b"tls-check"
                body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
                tls.sendall(bytes([0x10, len(body)]) + body)  # MQTT 3.1.1 CONNECT, clean session
                # Under TLS 1.3 a refused client certificate only shows here, on the first read.
                return tls.recv(4)

    connack_accepted = b"\x20\x02\x00\x00"

    assert handshake(False) == connack_accepted
    assert handshake(True) == connack_accepted
    # A client certificate from another CA is refused (verify_peer).
    from wharf_broker.tls.devpki import CertificateAuthority
    stranger = CertificateAuthority("Stranger CA").issue("intruder", client=True)
    (tmp_path / "client.crt").write_bytes(stranger.cert_pem())
    (tmp_path / "client.key").write_bytes(stranger.key_pem())
    try:
        answer = handshake(True, tmp_path)
    except (ssl.SSLError, ConnectionError):
        answer = None
    assert answer in (None, b""), "a certificate from an unknown CA got through"

    if shutil.which("mosquitto_pub"):
        for extra in ([], ["--cert", str(certs / "client.crt"), "--key", str(certs / "client.key")]):
            result = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile",
                                     str(certs / "rootCA.crt"), *extra, "-t", "tls/check", "-m", "hi", "-q", "1"],
                                    capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
