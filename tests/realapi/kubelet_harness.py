"""The harness plays the kubelet for broker Pods that kwok reports Running.

For every such Pod it
- projects the Pod's Secret and ConfigMap volumes into a directory per Pod, with the kubelet's
  atomic update (files are symlinks into ``..data``, which is swapped by one rename), and keeps
  them in sync with the API while the Pod runs;
- gives each PersistentVolumeClaim volume the directory of the PersistentVolume the claim is bound
  to (``<workdir>/volumes/<pv>``): it outlives the Pod, and the Pod that replaces it finds it again;
- starts the container's real command (``wharf-broker``) as a local process with the Pod's
  environment, listening on the Pod's IP (a loopback address from kwok's Pod CIDR);
- kills that process when its Pod goes away or is replaced by a new Pod of the same name (another
  UID). kwok's Stages delete a Pod at once, without a grace period, so what the node does once a
  grace period is over is what the harness does: SIGKILL (``stop_signal`` chooses another signal).
  ``stopped`` records each such stop with the process's exit status.

What a container runtime would give through mount and network namespaces, the harness gives by
translation: mount paths under ``/etc/wharf`` become the Pod's directory (a claim's mount path becomes
its volume's directory), and a ``0.0.0.0`` bind in the rendered config becomes the Pod IP (the ConfigMap
keeps the original, the projected file carries the translation). Volume sync runs every ``sync_interval`` seconds (the kubelet's default
is about a minute; the tests measure the operator and the broker, not that delay).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import kubernetes
from kubernetes.client import ApiException

CONTAINER_ROOT = "/etc/wharf"


class AtomicVolume:
    """A directory laid out like the kubelet's AtomicWriter output."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current: dict[str, bytes] | None = None

    def write(self, files: dict[str, bytes], mode: int) -> bool:
        """Publish ``files`` atomically; return True when the content changed."""
        if files == self.current:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
        payload = self.directory / stamp
        payload.mkdir()
        for name, content in files.items():
            path = payload / name
            path.write_bytes(content)
            path.chmod(mode)
        data_link, tmp_link = self.directory / "..data", self.directory / "..data_tmp"
        previous = os.readlink(data_link) if data_link.is_symlink() else None
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(stamp)
        os.replace(tmp_link, data_link)  # the one atomic step: every file changes at once
        for name in files:
            visible = self.directory / name
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / name)
        for name in set(self.current or {}) - set(files):
            (self.directory / name).unlink(missing_ok=True)
        if previous:
            _remove_tree(self.directory / previous)
        self.current = dict(files)
        return True


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@dataclass(frozen=True)
class Stopped:
    """A container the harness stopped because its Pod went away or was replaced."""

    pod: str
    uid: str
    signal: int
    returncode: int | None


class NotYet(Exception):
    """Something a Pod needs is not there yet; the next sync tries again."""


@dataclass
class PodRuntime:
    name: str
    uid: str
    ip: str
    root: Path
    volumes: dict[str, AtomicVolume] = field(default_factory=dict)
    # Container mount path -> the directory that stands for it on this host.
    host_paths: dict[str, Path] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log: Path | None = None
    exit_reported: bool = False


# Runs in the child before it becomes the broker: SIGTERM when the harness dies (a killed pytest
# leaves no broker behind). The death signal survives exec; it replaces a preexec_fn, which is
# unsafe in a process with threads (the harness and the MQTT clients run threads).
DIE_WITH_PARENT_EXEC = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM); "  # PR_SET_PDEATHSIG
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class KubeletHarness:
    """Run the Pods matching ``selector`` in ``namespace`` as local processes (see module doc)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, selector: str, workdir: Path,
                 sync_interval: float = 0.5, stop_signal: int = signal.SIGKILL) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.namespace, self.selector = namespace, selector
        self.workdir = workdir
        self.sync_interval = sync_interval
        self.stop_signal = stop_signal
        self.pods: dict[str, PodRuntime] = {}
        self.errors: list[str] = []
        self.stopped: list[Stopped] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kubelet-harness", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        with self._lock:
            for pod in self.pods.values():
                _terminate(pod.process)

    def running(self) -> dict[str, PodRuntime]:
        with self._lock:
            return {name: pod for name, pod in self.pods.items()
                    if pod.process is not None and pod.process.poll() is None}

    # -- the sync loop --

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync_once()
            except Exception as error:  # noqa: BLE001 - recorded for the test to report; the loop keeps going
                self.errors.append(f"{type(error).__name__}: {error}")
            self._stop.wait(self.sync_interval)

    def _sync_once(self) -> None:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        seen = set()
        for pod in pods:
            name = pod.metadata.name
            if pod.metadata.deletion_timestamp is not None or pod.status.phase != "Running" or not pod.status.pod_ip:
                continue
            seen.add(name)
            with self._lock:
                runtime = self.pods.get(name)
                if runtime is not None and runtime.uid != pod.metadata.uid:
                    self._pod_gone(runtime)  # a new Pod with the same name (a StatefulSet's replacement)
                    runtime = None
                if runtime is None:
                    runtime = self.pods[name] = PodRuntime(name, pod.metadata.uid, pod.status.pod_ip,
                                                           self.workdir / name / "etc-wharf")
            try:
                self._project_volumes(pod, runtime)
            except NotYet:
                continue  # a Pod its config names has no address yet: wait, as DNS would not resolve it either
            if runtime.process is None:
                self._start_container(pod, runtime)
            elif runtime.process.poll() is not None and not runtime.exit_reported:
                # No restarts (a kubelet would back off and retry): the test reports the crash instead.
                runtime.exit_reported = True
                tail = runtime.log.read_text(errors="replace").splitlines()[-5:] if runtime.log else []
                self.errors.append(f"{name}: broker exited with {runtime.process.returncode}: " + " | ".join(tail))
        with self._lock:
            for name in set(self.pods) - seen:
                self._pod_gone(self.pods.pop(name))

    def _pod_gone(self, runtime: PodRuntime) -> None:
        process = runtime.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.stopped.append(Stopped(runtime.name, runtime.uid, self.stop_signal, process.returncode))

    def claim_directory(self, claim_name: str) -> Path:
        """The directory of the PersistentVolume that ``claim_name`` is bound to (NotYet while unbound)."""
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(claim_name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                raise NotYet(f"PersistentVolumeClaim {claim_name} does not exist yet") from None
            raise
        if claim.status.phase != "Bound" or not claim.spec.volume_name:
            raise NotYet(f"PersistentVolumeClaim {claim_name} is not bound yet")
        return self.workdir / "volumes" / claim.spec.volume_name

    def _host_path(self, runtime: PodRuntime, mount_path: str) -> Path:
        if mount_path in runtime.host_paths:
            return runtime.host_paths[mount_path]
        # Broker mounts live under /etc/wharf; other images' mounts (NATS: /etc/nats, /data) keep their path
        # below the Pod's directory.
        if mount_path.startswith(CONTAINER_ROOT):
            return runtime.root / mount_path[len(CONTAINER_ROOT):].lstrip("/")
        return runtime.root / mount_path.lstrip("/")

    def translate(self, runtime: PodRuntime, text: str, mount_paths: list[str] | None = None) -> str:
        text = text.replace(f'"{CONTAINER_ROOT}/', f'"{runtime.root}/').replace('"0.0.0.0:', f'"{runtime.ip}:')
        for mount_path in mount_paths or []:
            if not mount_path.startswith(CONTAINER_ROOT):
                host_path = self._host_path(runtime, mount_path)
                text = text.replace(f'"{mount_path}/', f'"{host_path}/').replace(f'"{mount_path}"', f'"{host_path}"')
        # Unquoted listen addresses (nats.conf) and the Pods' DNS names (<pod>.<service>.<namespace>.svc),
        # which only a cluster DNS would resolve.
        text = re.sub(r"(?m)^(\s*(?:listen|http):\s*)0\.0\.0\.0:", lambda m: f"{m.group(1)}{runtime.ip}:", text)
        return self._pod_names_pattern().sub(lambda m: self._pod_ip(m.group(1)), text)

    def _pod_names_pattern(self) -> re.Pattern:
        return re.compile(r"\b([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\."
                          + re.escape(self.namespace) + r"\.svc\b")

    def _pod_ip(self, pod_name: str) -> str:
        try:
            pod = self.core.read_namespaced_pod(pod_name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                raise NotYet(f"Pod {pod_name} does not exist yet") from None
            raise
        if not pod.status.pod_ip:
            raise NotYet(f"Pod {pod_name} has no IP yet")
        return pod.status.pod_ip

    def _project_volumes(self, pod, runtime: PodRuntime) -> None:
        mounts = {m.name: m.mount_path for c in pod.spec.containers for m in c.volume_mounts or []}
        for volume in pod.spec.volumes or []:
            if volume.name in mounts and volume.persistent_volume_claim is not None \
                    and mounts[volume.name] not in runtime.host_paths:
                # The claim's volume: the bound PersistentVolume's directory, which outlives the Pod. Known
                # before any other volume is projected: the config names it.
                directory = self.claim_directory(volume.persistent_volume_claim.claim_name)
                directory.mkdir(parents=True, exist_ok=True)
                runtime.host_paths[mounts[volume.name]] = directory
                runtime.volumes[volume.name] = AtomicVolume(directory)
        for volume in pod.spec.volumes or []:
            if volume.name not in mounts or volume.persistent_volume_claim is not None:
                continue
            if volume.secret is not None:
                files, mode = self._secret_files(volume.secret.secret_name), volume.secret.default_mode or 0o644
            elif volume.config_map is not None:
                files, mode = self._config_map_files(volume.config_map.name), volume.config_map.default_mode or 0o644
            else:
                continue
            if files is None:
                continue  # not there yet: the kubelet waits too
            if volume.name == "config":
                files = {key: self.translate(runtime, value.decode(), list(mounts.values())).encode()
                         for key, value in files.items()}
            target = runtime.volumes.get(volume.name)
            if target is None:
                target = runtime.volumes[volume.name] = AtomicVolume(self._host_path(runtime, mounts[volume.name]))
            # Readable by the owner whatever the Pod's mode: the harness runs as one user.
            target.write(files, mode | 0o400)

    def _secret_files(self, name: str) -> dict[str, bytes] | None:
        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    def _config_map_files(self, name: str) -> dict[str, bytes] | None:
        try:
            config_map = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        files = {key: value.encode() for key, value in (config_map.data or {}).items()}
        files.update({key: base64.b64decode(value) for key, value in (config_map.binary_data or {}).items()})
        return files

    def _start_container(self, pod, runtime: PodRuntime) -> None:
        container = pod.spec.containers[0]
        if not all(name in runtime.volumes for name in
                   {m.name for m in container.volume_mounts or []}):
            return  # some volume is not projected yet
        command = [*(container.command or []), *(container.args or [])]
        executable = Path(sys.executable).with_name(command[0])
        if not executable.exists():  # not a Python entry point of this environment (e.g. nats-server)
            found = shutil.which(command[0])
            if found is None:
                raise FileNotFoundError(f"{executable} (the container command {command[0]}) is not installed")
            executable = Path(found)
        other_mounts = [m.mount_path for m in container.volume_mounts or []
                        if not m.mount_path.startswith(CONTAINER_ROOT)]

        def host_arg(arg: str) -> str:
            for mount_path in other_mounts:
                if arg == mount_path or arg.startswith(f"{mount_path}/"):
                    return str(self._host_path(runtime, mount_path)) + arg[len(mount_path):]
            return arg.replace(CONTAINER_ROOT, str(runtime.root))

        args = [str(executable)] + [host_arg(arg) for arg in command[1:]]
        # PYTHONPATH: a checkout that runs its own packages (a worktree) runs them in its "pods" too, not the
        # installed ones, which may be of another version than the operator under test.
        env = {key: os.environ[key] for key in ("PATH", "LANG", "HOME", "PYTHONPATH") if key in os.environ}
        env.update(NO_PROXY="*", no_proxy="*", PYTHONUNBUFFERED="1")
        for variable in container.env or []:
            if variable.value is not None:
                # The kubelet expands $(NAME) of variables defined before this one.
                env[variable.name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                            lambda m: env.get(m.group(1), m.group(0)), variable.value)
            elif variable.value_from and variable.value_from.field_ref:
                path = variable.value_from.field_ref.field_path
                env[variable.name] = {"metadata.name": pod.metadata.name, "status.podIP": runtime.ip,
                                      "metadata.namespace": self.namespace}.get(path, "")
        assert ipaddress.ip_address(runtime.ip).is_loopback, runtime.ip
        runtime.log = self.workdir / runtime.name / "broker.log"
        with open(runtime.log, "ab") as log:
            runtime.process = subprocess.Popen([sys.executable, "-c", DIE_WITH_PARENT_EXEC, *args], stdout=log,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                               cwd=runtime.root)


def _terminate(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 15 s: the harness's own shutdown, not a Pod's."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
