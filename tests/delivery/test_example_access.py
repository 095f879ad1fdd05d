"""The TLS examples in manifests/examples/ let in the clients their comments describe, and only those: each
example's MQTTBroker is rendered by the operator, its Secrets and ConfigMaps are laid out as the pod mounts
them, and a real broker process serves it on loopback to real TLS clients speaking MQTT 3.1.1."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CERTS = ROOT / "etc" / "certs"
PASSWORD = "correct horse"

pytest.importorskip("wharf_operator")
from wharf_operator import crd, layout, render  # noqa: E402


def _string(text: str) -> bytes:
    return len(text).to_bytes(2, "big") + text.encode()


def connect_packet(username: str | None = None, password: str | None = None) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _string("MQTT") + bytes([4, flags]) + b"\x00\x3c" + _string("example-client")
    body += (_string(username) if username is not None else b"") + (_string(password) if password else b"")
    return bytes([0x10, len(body)]) + body


def subscribe_packet(*filters: str) -> bytes:
    body = b"\x00\x01" + b"".join(_string(f) + b"\x00" for f in filters)
    return bytes([0x82, len(body)]) + body


def served(tmp_path: Path, broker_process, example: str):
    """Render ``example``'s MQTTBroker with its users and ACL in place; a broker serving it on loopback."""
    documents = [d for d in yaml.safe_load_all((ROOT / "manifests" / "examples" / example).read_text()) if d]
    spec = crd.defaulted_spec(next(d for d in documents if d["kind"] == "MQTTBroker")["spec"])
    root = tmp_path / "etc-wharf"

    def place(path: str, source: Path | None = None, text: str = "") -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            shutil.copy(source, path)
        else:
            Path(path).write_text(text)

    for listener in spec["listeners"]:
        if "tls" in listener:
            place(f"{layout.cert_dir(listener['name'], str(root))}/tls.crt", CERTS / "server.crt")
            place(f"{layout.cert_dir(listener['name'], str(root))}/tls.key", CERTS / "server.key")
            place(f"{layout.ca_dir(listener['name'], str(root))}/ca.crt", CERTS / "rootCA.crt")
    acl = spec["authorization"]["aclRef"]
    acl_map = next(d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == acl["name"])
    place(f"{layout.acl_dir(str(root))}/{acl['key']}", text=acl_map["data"][acl["key"]])
    users = spec["authentication"].get("passwordFile")
    if users:
        users_file = f"{layout.users_dir(str(root))}/{users['secretRef']['key']}"
        place(users_file, text="# made as the example's comment says\n")
        subprocess.run([sys.executable, "-m", "wharf_broker.authn.passwd", "-f", users_file, "--stdin",
                        "--iterations", "1000", "sensor-1"], input=(PASSWORD + "\n").encode(), check=True,
                       timeout=60)
    place(layout.admin_token_file(str(root)), text="test-token\n")
    # The pod binds every address on fixed ports; here: loopback, ports the kernel picks.
    config = re.sub(r'"0\.0\.0\.0:\d+"', '"127.0.0.1:0"', render.render(spec, root=str(root)))
    return broker_process(config)


def session(port: int, *packets: bytes, with_certificate: bool = False, expect: int) -> bytes:
    """TLS to the broker, send ``packets``, return the first ``expect`` bytes it answers (or fewer at EOF)."""
    context = ssl.create_default_context(cafile=str(CERTS / "rootCA.crt"))
    if with_certificate:
        context.load_cert_chain(CERTS / "client.crt", CERTS / "client.key")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"".join(packets))
            answer = b""
            while len(answer) < expect:
                chunk = tls.recv(expect - len(answer))
                if not chunk:
                    break
                answer += chunk
            return answer


CONNACK_OK = b"\x20\x02\x00\x00"
SUBACK_OWN_ONLY = b"\x90\x04\x00\x01\x00\x80"  # own tree granted QoS 0, the other refused


def test_one_way_tls_example_takes_users_from_the_password_file(tmp_path, broker_process):
    port = served(tmp_path, broker_process, "one-way-tls.yaml").port("ssl:mqtts")
    answer = session(port, connect_packet("sensor-1", PASSWORD),
                     subscribe_packet("devices/sensor-1/#", "devices/other/#"), expect=10)
    assert answer == CONNACK_OK + SUBACK_OWN_ONLY
    assert session(port, connect_packet(), expect=4) == b"\x20\x02\x00\x05"  # anonymous: not authorized
    assert session(port, connect_packet("sensor-1", "wrong"), expect=4) == b"\x20\x02\x00\x04"


def test_mtls_example_names_clients_by_their_certificate(tmp_path, broker_process):
    port = served(tmp_path, broker_process, "mtls.yaml").port("ssl:mqtts")
    # The bundled client certificate's CN is "client": that is its user name for the ACL.
    answer = session(port, connect_packet(), subscribe_packet("devices/client/#", "devices/sensor-1/#"),
                     with_certificate=True, expect=10)
    assert answer == CONNACK_OK + SUBACK_OWN_ONLY
    # Without a certificate there is no connection at all.
    try:
        answer = session(port, connect_packet(), expect=4)
    except (ssl.SSLError, ConnectionError):  # (TLS 1.3: the refusal arrives after the client's handshake)
        answer = b""
    assert answer == b""


def test_cert_manager_example_takes_users_from_the_password_file(tmp_path, broker_process):
    port = served(tmp_path, broker_process, "cert-manager.yaml").port("ssl:mqtts")
    answer = session(port, connect_packet("sensor-1", PASSWORD),
                     subscribe_packet("devices/sensor-1/#", "devices/other/#"), expect=10)
    assert answer == CONNACK_OK + SUBACK_OWN_ONLY
    assert session(port, connect_packet(), expect=4) == b"\x20\x02\x00\x05"
