"""A real Kubernetes control plane as local processes on 127.0.0.1, for tests and manual use.

etcd 3.5, kube-apiserver (TLS, client-certificate and ServiceAccount-token authentication,
RBAC authorization), kube-controller-manager, kube-scheduler and kwok with one fake node.
The binaries come from ``build.sh`` (pinned, cached); this module only runs them.

Addresses: every component listens on 127.0.0.1, on ports found free at start time. kwok
hands out Pod IPs from a /16 inside 127.0.0.0/8 chosen at start (``choose_pod_cidr``: control
planes of concurrent test sessions must not hand out the same Pod IPs, since a harness binds
real processes to them); the node's own address is 127.0.0.1; the Service cluster IP range
``SERVICE_CIDR`` is loopback too. Nothing in this setup points at a private
or public address, so nothing can ever connect to one by accident.

Standard library plus ``cryptography`` only, so that the ``scripts/controlplane`` command
works without the test dependencies.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
KWOK_STAGES = HERE / "kwok-stages.yaml"

# Loopback ranges: Pods get 127.<n>.x.y with n in POD_CIDR_SECOND_OCTETS, Services 127.64.x.y.
# Nothing listens on a Service IP (there is no kube-proxy), and tests never connect to one.
POD_CIDR_SECOND_OCTETS = range(100, 255)
SERVICE_CIDR = "127.64.0.0/16"
NODE_IP = "127.0.0.1"
NODE_NAME = "wharf-kwok-node"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ControlPlaneUnavailable(RuntimeError):
    """The binaries are missing and cannot be built here (no Go, or the build failed)."""


class ControlPlaneError(RuntimeError):
    """A component failed to start or to become ready; the message carries its log tail."""


def locate_binaries(build: bool = True) -> Path:
    """Return the directory holding the pinned binaries, building them first if asked."""
    if shutil.which("go") is None:
        raise ControlPlaneUnavailable("no Go toolchain on PATH: the control plane binaries cannot be built")
    command = [str(BUILD_SCRIPT)] if build else [str(BUILD_SCRIPT), "--check"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=None if build else subprocess.DEVNULL, text=True,
                            check=False)
    if result.returncode != 0:
        if build:
            raise ControlPlaneUnavailable(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
        raise ControlPlaneUnavailable(f"control plane not built yet: run {BUILD_SCRIPT} (or `make controlplane`)")
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise ControlPlaneUnavailable(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def pinned_versions() -> dict[str, str]:
    """The versions in versions.env, e.g. {'KUBERNETES_VERSION': '1.34.4', ...}."""
    versions = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def _listening_ipv4_addresses() -> set[ipaddress.IPv4Address]:
    addresses = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return addresses
    for line in lines:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A":  # LISTEN
            addresses.add(ipaddress.IPv4Address(bytes.fromhex(local.split(":")[0])[::-1]))
    return addresses


def choose_pod_cidr() -> str:
    """A loopback /16 for Pod IPs in which nothing listens yet (another session's Pods would)."""
    import random

    busy = {address.packed[1] for address in _listening_ipv4_addresses() if address.packed[0] == 127}
    candidates = [octet for octet in POD_CIDR_SECOND_OCTETS if octet not in busy]
    if not candidates:
        raise ControlPlaneError("no free loopback /16 for Pod IPs")
    return f"127.{random.choice(candidates)}.0.0/16"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- certificates -----------------------------------------------------------------------------

def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class Pki:
    """Paths of the generated certificate authority, certificates and ServiceAccount keys."""

    directory: Path
    ca_cert: Path = field(init=False)
    sa_private_key: Path = field(init=False)
    sa_public_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca_cert = self.directory / "ca.crt"
        self.sa_private_key = self.directory / "sa.key"
        self.sa_public_key = self.directory / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


# Client identities: (file name, common name, organisations). The controller manager and the
# scheduler get their bootstrap RBAC identities; kwok plays every kubelet, so it is an admin.
CLIENT_IDENTITIES = (
    ("admin", "wharf-admin", ("system:masters",)),
    ("controller-manager", "system:kube-controller-manager", ()),
    ("scheduler", "system:kube-scheduler", ()),
    ("kwok", "kwok-controller", ("system:masters",)),
)


def generate_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wharf-local-ca")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_cert(pki.ca_cert, ca_cert)

    def issue(name: str, subject: x509.Name, usage, sans=None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write_cert(pki.cert(name), builder.sign(ca_key, hashes.SHA256()))
        _write_key(pki.key(name), key)

    first_service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    issue("apiserver", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
          x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
          [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(first_service_ip),
           x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
           x509.DNSName("kubernetes.default.svc"), x509.DNSName("kubernetes.default.svc.cluster.local")])
    for name, common_name, organisations in CLIENT_IDENTITIES:
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organisations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        issue(name, x509.Name(attributes), x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_private_key, sa_key)
    pki.sa_public_key.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def write_kubeconfig(path: Path, server: str, ca_cert: Path, *, client_cert: Path | None = None,
                     client_key: Path | None = None, token: str | None = None, namespace: str | None = None,
                     user: str = "user") -> Path:
    """Write a kubeconfig (JSON is valid YAML, and every client reads it)."""
    credentials: dict[str, str] = {}
    if client_cert is not None:
        credentials = {"client-certificate": str(client_cert), "client-key": str(client_key)}
    if token is not None:
        credentials["token"] = token
    context = {"cluster": "wharf-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "wharf-local",
        "clusters": [{"name": "wharf-local", "cluster": {"server": server, "certificate-authority": str(ca_cert)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "wharf-local", "context": context}],
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# --- processes --------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: get SIGTERM when the starting process dies, so a killed pytest leaves nothing."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_environment(home: Path) -> dict[str, str]:
    # No proxy variables: every connection stays on 127.0.0.1. HOME is private so that no
    # component reads or writes a user's configuration (kwok looks at ~/.kwok).
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(HOME=str(home), NO_PROXY="*", no_proxy="*")
    return env


@dataclass
class ComponentProcess:
    name: str
    pid: int
    binary: str
    log: str

    def alive(self) -> bool:
        """True while the process runs and is still ours (the pid was not reused)."""
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as handle:
                argv0 = handle.read().split(b"\0", 1)[0].decode(errors="replace")
            with open(f"/proc/{self.pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        # An empty command line: the process is inside execve (vfork-based spawning returns early).
        return argv0 in (self.binary, "") and state != "Z"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class ControlPlaneState:
    """What `down` and `env` need to find a running control plane again (saved as state.json)."""

    workdir: str
    kubeconfig: str
    server: str
    pod_cidr: str
    ports: dict[str, int]
    processes: list[ComponentProcess]

    def save(self) -> None:
        (Path(self.workdir) / "state.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> ControlPlaneState:
        data = json.loads((workdir / "state.json").read_text())
        data["processes"] = [ComponentProcess(**process) for process in data["processes"]]
        return cls(**data)


class LocalControlPlane:
    """Start and stop the control plane in ``workdir``; ``kubeconfig`` is an admin kubeconfig."""

    def __init__(self, workdir: Path, bin_dir: Path, *, die_with_parent: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.bin_dir = Path(bin_dir)
        self.die_with_parent = die_with_parent
        self.logs = self.workdir / "logs"
        self.pki: Pki | None = None
        self.ports: dict[str, int] = {}
        self.pod_cidr = choose_pod_cidr()
        self.processes: list[tuple[ComponentProcess, subprocess.Popen | None]] = []
        self.kubeconfig = self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    # -- lifecycle --

    def start(self, timeout: float = 120.0, attempts: int = 3) -> LocalControlPlane:
        """Start every component and wait until the cluster works. A port found free can be taken
        by another process before a component binds it; then start again on other ports."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except ControlPlaneError as error:
                if attempt == attempts or "address already in use" not in str(error):
                    raise
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> LocalControlPlane:
        deadline = time.monotonic() + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        (self.workdir / "home").mkdir(exist_ok=True)
        self.pki = generate_pki(self.workdir / "pki")
        for name in ("etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler"):
            self.ports[name] = free_loopback_port()
        try:
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self._save_state()
            self._wait_for_cluster(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Stop every component, newest first: SIGTERM, then SIGKILL after ``grace`` seconds."""
        for component, popen in reversed(self.processes):
            _terminate(component, popen, grace)
        self.processes.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- components --

    def _spawn(self, name: str, args: list[str]) -> ComponentProcess:
        binary = str(self.bin_dir / name)
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [binary, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=_child_environment(self.workdir / "home"), start_new_session=True,
                # Started from the main thread (the session fixture, the CLI), where preexec_fn is safe.
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        component = ComponentProcess(name=name, pid=popen.pid, binary=binary, log=str(log_path))
        self.processes.append((component, popen))
        return component

    def _start_etcd(self, deadline: float) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd-client']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        etcd = self._spawn("etcd", [
            "--name=wharf-local", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=wharf-local={peer}", "--initial-cluster-state=new",
            # A throw-away store: durability buys nothing and fsync costs seconds on a busy disk.
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait_until(deadline, etcd, "etcd healthy",
                         lambda: json.loads(_http_get(f"{client}/health")).get("health") == "true")

    def _start_apiserver(self, deadline: float) -> None:
        pki = self.pki
        apiserver = self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd-client']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}", f"--cert-dir={pki.directory}",
            f"--tls-cert-file={pki.cert('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC", "--anonymous-auth=false", "--allow-privileged=true",
            # Endpoints may not hold a loopback address, so the apiserver must not publish its own.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false", "--profiling=false",
        ])
        self._wait_until(deadline, apiserver, "kube-apiserver ready", lambda: self._get("/readyz") == "ok")

    def _component_kubeconfig(self, name: str) -> Path:
        return write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, self.pki.ca_cert,
                                client_cert=self.pki.cert(name), client_key=self.pki.key(name), user=name)

    def _start_controller_manager(self) -> None:
        kubeconfig = self._component_kubeconfig("controller-manager")
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['controller-manager']}",
            "--leader-elect=false", "--controllers=*", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki.sa_private_key}", f"--root-ca-file={self.pki.ca_cert}",
            "--cluster-name=wharf-local", "--profiling=false",
        ])

    def _start_scheduler(self) -> None:
        kubeconfig = self._component_kubeconfig("scheduler")
        self._spawn("kube-scheduler", [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['scheduler']}",
            "--leader-elect=false", "--profiling=false",
        ])

    def _start_kwok(self) -> None:
        kubeconfig = self._component_kubeconfig("kwok")
        self._spawn("kwok", [
            f"--kubeconfig={kubeconfig}", f"--config={KWOK_STAGES}",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
            f"--node-ip={NODE_IP}", f"--cidr={self.pod_cidr}", "--node-lease-duration-seconds=40",
        ])

    def _wait_for_cluster(self, deadline: float) -> None:
        """Register the fake node, then wait until kwok reports it Ready and the controller
        manager has created the default ServiceAccount (both prove those components work)."""
        write_kubeconfig(self.kubeconfig, self.server, self.pki.ca_cert,
                         client_cert=self.pki.cert("admin"), client_key=self.pki.key("admin"), user="admin")
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                         "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok"}},
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
        }
        self._request("POST", "/api/v1/nodes", node)
        components = {component.name: component for component, _ in self.processes}

        def node_ready() -> bool:
            status = json.loads(self._get(f"/api/v1/nodes/{NODE_NAME}")).get("status", {})
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))

        def default_service_account() -> bool:
            try:
                self._get("/api/v1/namespaces/default/serviceaccounts/default")
                return True
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return False
                raise

        self._wait_until(deadline, components["kwok"], "kwok node Ready", node_ready)
        self._wait_until(deadline, components["kube-controller-manager"], "default ServiceAccount",
                         default_service_account)
        for component in components.values():
            if not component.alive():
                raise ControlPlaneError(f"{component.name} exited during start-up:\n{component.log_tail()}")

    def _wait_until(self, deadline: float, component: ComponentProcess, what: str, check) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not component.alive():
                raise ControlPlaneError(f"{component.name} exited ({self._exit_status(component)}) before {what}:\n"
                                        f"{component.log_tail()}")
            try:
                if check():
                    return
            except (OSError, ValueError, urllib.error.URLError) as error:
                last_error = error
            time.sleep(0.25)
        raise ControlPlaneError(f"timed out waiting for {what} (last error: {last_error}):\n{component.log_tail()}")

    def _exit_status(self, component: ComponentProcess) -> str:
        for candidate, popen in self.processes:
            if candidate is component and popen is not None:
                code = popen.poll()
                if code is None:
                    return "still running, but no longer the expected program"
                return f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return "status unknown"

    def _save_state(self) -> None:
        ControlPlaneState(workdir=str(self.workdir), kubeconfig=str(self.kubeconfig), server=self.server,
                          pod_cidr=self.pod_cidr, ports=self.ports, processes=[component for component, _ in self.processes]).save()

    # -- admin HTTP, standard library only --

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        return context

    def _request(self, method: str, path: str, body: dict | None = None) -> str:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with _loopback_opener(self._ssl_context()).open(request, timeout=10) as response:
            return response.read().decode()

    def _get(self, path: str) -> str:
        return self._request("GET", path)


def _loopback_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    # An explicit empty ProxyHandler: a proxy variable in the environment must never route
    # these loopback requests elsewhere.
    handlers: list = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _http_get(url: str) -> str:
    with _loopback_opener().open(url, timeout=5) as response:
        return response.read().decode()


def _terminate(component: ComponentProcess, popen: subprocess.Popen | None, grace: float) -> None:
    if popen is not None:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        return
    # Not our child (started by an earlier `up`): signal by pid, but only while it is still ours.
    if not component.alive():
        return
    os.kill(component.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while component.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if component.alive():
        os.kill(component.pid, signal.SIGKILL)
        while component.alive():
            time.sleep(0.05)


def stop_saved(workdir: Path, grace: float = 15.0) -> list[str]:
    """Stop a control plane started by an earlier process, from its state.json; return names stopped."""
    state = ControlPlaneState.load(workdir)
    stopped = []
    for component in reversed(state.processes):
        if component.alive():
            _terminate(component, None, grace)
            stopped.append(component.name)
    return stopped


def running_saved(workdir: Path) -> ControlPlaneState | None:
    """The saved state if every component is still running, else None."""
    try:
        state = ControlPlaneState.load(workdir)
    except (OSError, ValueError):
        return None
    return state if all(component.alive() for component in state.processes) else None


if __name__ == "__main__":  # pragma: no cover - manual use goes through scripts/controlplane
    sys.exit("use scripts/controlplane up|down|env")
