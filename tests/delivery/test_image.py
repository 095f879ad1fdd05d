"""The container image, built for real: it runs the broker by default and serves MQTT over TLS to the host.

Slow (an image build). Needs a Docker daemon: DOCKER_HOST if it answers, else a private dockerd started from
Debian's docker.io by scripts/local-dockerd.sh (root). The base image is WHARF_IMAGE_BASE when set (CI: the
official slim Python image), else the local debootstrap image from scripts/build-base-image.sh.
The container shares the host's network and its listeners bind to free loopback ports (the daemon runs
without a bridge), so nothing is reachable from outside the machine.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from delivery_support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the first test builds the base image and the image

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
CERTS = ROOT / "etc" / "certs"
TAG = "wharf:test"


def docker(*args: str, env: dict, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def docker_env():
    env = dict(os.environ)
    if env.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists():
        if subprocess.run([DOCKER, "version"], capture_output=True, env=env).returncode == 0:
            yield env
            return
    if not Path("/usr/sbin/dockerd").exists() or os.geteuid() != 0:
        pytest.skip("no Docker daemon answers and Debian's docker.io (dockerd) is not installed, or not root")
    script = ROOT / "scripts" / "local-dockerd.sh"
    running = subprocess.run([DOCKER, "-H", "unix:///run/wharf-dockerd/docker.sock", "version"],
                             capture_output=True).returncode == 0
    proc = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    env["DOCKER_HOST"] = proc.stdout.strip().split("=", 1)[1]
    yield env
    if not running:  # stop only a daemon this test started
        subprocess.run([str(script), "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def image(docker_env: dict) -> str:
    assert (ROOT / "README.md").exists(), \
        "README.md is missing: pyproject.toml names it as the package's readme, so the package cannot be built"
    base = os.environ.get("WHARF_IMAGE_BASE")
    if not base:
        proc = subprocess.run([str(ROOT / "scripts" / "build-base-image.sh")], capture_output=True, text=True,
                              env={**docker_env, "CONTAINER_CLI": DOCKER}, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        base = proc.stdout.strip()
    # Host network for the build: RUN steps reach the package index without a bridge.
    docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", TAG, str(ROOT),
           env=docker_env, timeout=1200)
    return TAG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_image_runs_unprivileged_without_build_tools(image: str, docker_env: dict) -> None:
    out = docker("run", "--rm", "--network", "none", image, "sh", "-c",
                 "id -u; for t in pip pip3 gcc cc make; do command -v $t || true; done; "
                 "wharf-operator --version; wharf-broker --version",
                 env=docker_env).stdout.split()
    assert out[0] == "10001"
    assert not any(word.endswith(("/pip", "/pip3", "/gcc", "/cc", "/make")) for word in out), out
    assert "wharf-operator" in out and "wharf-broker" in out


def test_image_carries_no_private_key_of_the_repository(image: str, docker_env: dict) -> None:
    """Anyone has the repository's test keys: no file in the image may hold one. The state directory is empty,
    private and the unprivileged user's."""
    needles = []
    for key in CERTS.glob("*.key"):
        body = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
        needles += ["-e", body[1] if len(body) > 1 else body[0]]
    script = ("grep -rlF " + " ".join(f"'{n}'" for n in needles) +
              " / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; "
              "echo \"home=$WHARF_HOME\"; stat -c 'state=%u:%g:%a' /var/lib/wharf; ls -A /var/lib/wharf | wc -l; "
              "test ! -e /opt/wharf/etc && echo no-etc")
    out = docker("run", "--rm", "--network", "none", "--user", "0", image, "sh", "-c", script,
                 env=docker_env, timeout=300).stdout.split()
    assert out == ["home=/var/lib/wharf", "state=10001:10001:700", "0", "no-etc"], out


def test_state_survives_in_a_volume(image: str, docker_env: dict, tmp_path: Path) -> None:
    """With /var/lib/wharf on a volume, the next container reuses the CA the first one generated."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 10001, 10001)
    runs = [docker("run", "--rm", "--network", "none", "-v", f"{state}:/var/lib/wharf", image, "wharf-broker",
                   "--check-config", env=docker_env).stdout for _ in range(2)]
    assert "generated a local CA /var/lib/wharf/certs/rootCA.crt" in runs[0]
    assert "generated a " not in runs[1] and "trust the CA /var/lib/wharf/certs/rootCA.crt" in runs[1]
    assert (state / "certs" / "rootCA.key").stat().st_mode & 0o077 == 0


def test_default_command_is_the_broker(image: str, docker_env: dict) -> None:
    config = docker("image", "inspect", "--format", "{{json .Config.Cmd}} {{.Config.User}}", image,
                    env=docker_env).stdout.strip()
    assert config == '["wharf-broker"] 10001:10001'


@pytest.fixture
def broker_container(image: str, docker_env: dict, tmp_path: Path):
    """The image's default command (the broker, built-in config) on loopback ports; ``["certs"]`` is a copy of the
    CA and client certificate it generated (read from the container, where the log says they are)."""
    ports = {name: free_port() for name in ("TCP", "SSL", "WS", "WSS", "DASHBOARD")}
    name = f"wharf-test-{uuid.uuid4().hex[:8]}"
    args = ["run", "-d", "--name", name, "--network", "host"]
    for listener, port in ports.items():
        args += ["-e", f"WHARF_{listener}_BIND=127.0.0.1:{port}"]
    docker(*args, image, env=docker_env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["SSL"]), timeout=1).close()
                break
            except OSError:
                state = docker("inspect", "--format", "{{.State.Running}}", name, env=docker_env).stdout.strip()
                logs = docker("logs", name, env=docker_env, check=False)
                assert state == "true", f"the broker container exited:\n{logs.stdout}{logs.stderr}"
                assert time.monotonic() < deadline, f"the broker never listened:\n{logs.stderr[-2000:]}"
                time.sleep(0.5)
        logs = docker("logs", name, env=docker_env)
        assert "trust the CA /var/lib/wharf/certs/rootCA.crt; client certificate /var/lib/wharf/certs/client.crt " \
               "and key /var/lib/wharf/certs/client.key" in logs.stdout + logs.stderr
        certs = tmp_path / "generated"
        certs.mkdir()
        for file in ("rootCA.crt", "server.crt", "client.crt", "client.key"):
            (certs / file).write_text(docker("exec", name, "cat", f"/var/lib/wharf/certs/{file}",
                                             env=docker_env).stdout)
        yield {**ports, "certs": certs}
    finally:
        docker("rm", "-f", name, env=docker_env, check=False)


def tls_client(client_id: str, certs: Path, with_client_cert: bool) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(cafile=str(certs / "rootCA.crt"))
    if with_client_cert:
        context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    client.tls_set_context(context)
    return client


@pytest.mark.parametrize("with_client_cert", [False, True], ids=["one-way", "mutual"])
def test_host_exchanges_messages_with_the_container_over_tls(broker_container: dict,
                                                             with_client_cert: bool) -> None:
    port, certs = broker_container["SSL"], broker_container["certs"]
    # The certificate served is the one generated in the container, verified against its CA for "localhost".
    context = ssl.create_default_context(cafile=str(certs / "rootCA.crt"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        served = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert((certs / "server.crt").read_text())).hexdigest()
    assert served == expected
    repository = hashlib.sha256(ssl.PEM_cert_to_DER_cert((CERTS / "server.crt").read_text())).hexdigest()
    assert served != repository

    received: queue.Queue = queue.Queue()
    subscriber = tls_client("image-sub", certs, with_client_cert)
    subscriber.on_message = lambda _c, _u, message: received.put((message.topic, message.payload))
    subscriber.connect("localhost", port)
    subscriber.loop_start()
    publisher = tls_client("image-pub", certs, with_client_cert)
    publisher.connect("localhost", port)
    publisher.loop_start()
    try:
        subscribed = subscriber.subscribe("image/test", qos=1)
        assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS
        # Publish until the subscription is in place (SUBACK is asynchronous), bounded.
        for _ in range(20):
            publisher.publish("image/test", b"over tls", qos=1).wait_for_publish(timeout=5)
            try:
                assert received.get(timeout=1) == ("image/test", b"over tls")
                break
            except queue.Empty:
                continue
        else:
            pytest.fail("no message came back through the containerised broker")
    finally:
        for client in (subscriber, publisher):
            client.disconnect()
            client.loop_stop()


def untrusted_client_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed client certificate that does not chain to the broker's CA."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "intruder.crt", directory / "intruder.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def mqtt_connect_over_tls(port: int, cafile: Path, client_cert: tuple[str, str]) -> bytes:
    """Send an MQTT 3.1.1 CONNECT with this client certificate; return the first bytes of the answer.

    b"" (or an SSL error) means the broker closed the connection; a CONNACK starts with 0x20.
    """
    client_id = b"image-test"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    connect = bytes([0x10, len(variable)]) + variable
    context = ssl.create_default_context(cafile=str(cafile))
    context.load_cert_chain(*client_cert)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        try:
            tls.sendall(connect)
            return tls.recv(4)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_container_verifies_client_certificates(broker_container: dict, tmp_path: Path) -> None:
    """verify_peer in the built-in config: a presented certificate must chain to the generated CA."""
    port, certs = broker_container["SSL"], broker_container["certs"]
    cafile = certs / "rootCA.crt"
    trusted = (str(certs / "client.crt"), str(certs / "client.key"))
    assert mqtt_connect_over_tls(port, cafile, trusted)[:1] == b"\x20"  # CONNACK
    # With TLS 1.3 the server's verdict comes after the client's handshake completes: the broker then
    # closes the connection instead of answering the CONNECT. The repository's test client is a stranger too.
    assert mqtt_connect_over_tls(port, cafile, untrusted_client_certificate(tmp_path)) == b""
    assert mqtt_connect_over_tls(port, cafile, (str(CERTS / "client.crt"), str(CERTS / "client.key"))) == b""


def test_image_runs_the_config_the_operator_renders(image: str, docker_env: dict, tmp_path: Path) -> None:
    """In Kubernetes the broker gets the operator's config (the whole config) and Secret volumes, so the
    generated certificates are not used: the rendered config names only the mounted files, and the image's
    broker accepts it with those files in place (--check-config loads the certificate material)."""
    import yaml
    from wharf_operator import crd, layout, render

    example = [d for d in yaml.safe_load_all((ROOT / "manifests" / "examples" / "mtls.yaml").read_text()) if d]
    broker = next(d for d in example if d["kind"] == "MQTTBroker")
    spec = crd.defaulted_spec(broker["spec"])
    config = render.render(spec)
    assert "etc/certs" not in config.replace(layout.ROOT, "")
    # The pod's /etc/wharf as the StatefulSet mounts it: config, each listener's Secret, CA bundle, admin token.
    root = tmp_path / "etc-wharf"
    files: dict[str, Path | None] = {layout.config_file(str(root)): None, layout.admin_token_file(str(root)): None}
    for listener in spec["listeners"]:
        name = listener["name"]
        files[f"{layout.cert_dir(name, str(root))}/tls.crt"] = CERTS / "server.crt"
        files[f"{layout.cert_dir(name, str(root))}/tls.key"] = CERTS / "server.key"
        files[f"{layout.ca_dir(name, str(root))}/ca.crt"] = CERTS / "rootCA.crt"
    for target, source in files.items():
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            shutil.copy(source, target)
    acl_ref = spec.get("authorization", {}).get("aclRef")
    if acl_ref:  # the example's ACL ConfigMap, mounted whole
        acl_map = next(d for d in example if d["kind"] == "ConfigMap" and d["metadata"]["name"] == acl_ref["name"])
        acl_path = Path(layout.acl_dir(str(root))) / acl_ref.get("key", "acl.conf")
        acl_path.parent.mkdir(parents=True, exist_ok=True)
        acl_path.write_text(acl_map["data"][acl_ref.get("key", "acl.conf")])
    Path(layout.config_file(str(root))).write_text(config)
    Path(layout.admin_token_file(str(root))).write_text("test-token\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's unprivileged user
    proc = docker("run", "--rm", "--network", "none", "-v", f"{root}:{layout.ROOT}:ro", image,
                  "wharf-broker", "--config", layout.config_file(), "--check-config", env=docker_env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
