"""Calls the broker admin API of each pod, at the pod's IP (``status.podIP``), with the per-broker token.

Every call has connect and total timeouts. Targets are checked against an allow-list of networks before any
connection is made: production allows every address; tests set it to 127.0.0.0/8 so that a test can never
reach a real network address by accident (``AddressNotAllowed``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .crd import ADMIN_PORT

ALL_NETWORKS = ("0.0.0.0/0", "::/0")
LOOPBACK_ONLY = ("127.0.0.0/8",)


class AddressNotAllowed(Exception):
    """The pod IP is outside the networks the operator may call."""


class SignalError(Exception):
    """A pod could not be reached or answered with an error."""

    def __init__(self, pod: str, message: str, status: int | None = None) -> None:
        super().__init__(f"pod {pod}: {message}")
        self.pod = pod
        self.status = status


@dataclass(frozen=True)
class PodTarget:
    name: str
    ip: str
    port: int = ADMIN_PORT

    @classmethod
    def from_pod(cls, pod: dict) -> PodTarget | None:
        """A Running pod with an IP, else None. The admin port is the container port named "admin"."""
        status = pod.get("status") or {}
        metadata = pod.get("metadata") or {}
        if status.get("phase") != "Running" or not status.get("podIP") or metadata.get("deletionTimestamp"):
            return None
        port = ADMIN_PORT
        for container in (pod.get("spec") or {}).get("containers") or []:
            for container_port in container.get("ports") or []:
                if container_port.get("name") == "admin":
                    port = int(container_port["containerPort"])
        return cls(name=metadata.get("name", "?"), ip=status["podIP"], port=port)


@dataclass
class ReloadOutcome:
    pod: str
    ok: bool
    fingerprint: str | None = None
    error: str | None = None
    status: int | None = None


@dataclass
class RotationResult:
    outcomes: list[ReloadOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def serving(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.ok)

    @property
    def errors(self) -> list[str]:
        return [f"{o.pod}: {o.error}" for o in self.outcomes if not o.ok]


class BrokerAdmin:
    def __init__(self, allowed_networks: Iterable[str] = ALL_NETWORKS, *, connect_timeout: float = 3.0,
                 request_timeout: float = 10.0) -> None:
        self.allowed_networks = tuple(ipaddress.ip_network(n) for n in allowed_networks)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None

    def check_address(self, ip: str) -> None:
        address = ipaddress.ip_address(ip)
        if not any(address in network for network in self.allowed_networks if network.version == address.version):
            raise AddressNotAllowed(f"{ip} is outside the allowed pod networks "
                                    f"{', '.join(str(n) for n in self.allowed_networks)}")

    def _url(self, pod: PodTarget, path: str) -> str:
        self.check_address(pod.ip)
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        # Health paths sit beside the API, not under it.
        prefix = "" if path in ("/healthz", "/readyz") else "/api/v5"
        return f"http://{host}:{pod.port}{prefix}{path}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(self, method: str, pod: PodTarget, path: str, token: str, *, body: Any = None,
                    extra_seconds: float = 0.0) -> tuple[int, Any]:
        url = self._url(pod, path)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout + extra_seconds, sock_connect=self.connect_timeout)
        try:
            async with self._client().request(method, url, json=body, timeout=timeout,
                                              headers={"Authorization": f"Bearer {token}"}) as response:
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = {"message": (await response.text())[:300]}
                return response.status, payload
        except TimeoutError:
            raise SignalError(pod.name, f"no answer from {url} in time") from None
        except aiohttp.ClientError as exc:
            raise SignalError(pod.name, f"{url}: {exc}") from None

    async def reload(self, pod: PodTarget, token: str, listener_id: str, fingerprint: str | None,
                     wait_seconds: float, client_ca_sha256: str | None = None) -> ReloadOutcome:
        """Ask one pod to load the listener's certificate once its files carry ``fingerprint``; with
        ``client_ca_sha256``, also that client-CA bundle even if the pod's guard would hold it."""
        body: dict[str, Any] = {"timeout": wait_seconds}
        if fingerprint:
            body["fingerprint"] = fingerprint
        if client_ca_sha256:
            body["client_ca_sha256"] = client_ca_sha256
        try:
            status, payload = await self._call("POST", pod, f"/listeners/{listener_id}/reload", token, body=body,
                                               extra_seconds=wait_seconds)
        except SignalError as exc:
            return ReloadOutcome(pod.name, False, error=str(exc))
        payload = payload if isinstance(payload, dict) else {}
        if status == 200:
            served = payload.get("fingerprint")
            if fingerprint and served and served != fingerprint:
                return ReloadOutcome(pod.name, False, served, f"serves {served} instead of {fingerprint}", status)
            return ReloadOutcome(pod.name, True, served or fingerprint, status=status)
        if status == 409 and payload.get("code") == "CLIENT_CA_HELD":
            return ReloadOutcome(pod.name, False, error=f"the pod holds its new client-CA bundle back: "
                                                        f"{payload.get('message') or ''}", status=status)
        reason = {409: "the new certificate did not reach the pod's files in time",
                  422: "the broker refused the new material"}.get(status, f"HTTP {status}")
        detail = payload.get("message") or payload.get("reason") or payload.get("error") or ""
        return ReloadOutcome(pod.name, False, error=f"{reason}{': ' + str(detail) if detail else ''}", status=status)

    async def served_certificate(self, pod: PodTarget, token: str, listener_id: str) -> dict:
        status, payload = await self._call("GET", pod, f"/listeners/{listener_id}/certificate", token)
        if status != 200 or not isinstance(payload, dict):
            raise SignalError(pod.name, f"certificate of {listener_id}: HTTP {status}", status)
        return payload

    async def client_ca_check(self, pod: PodTarget, token: str, listener_id: str, bundle: bytes) -> dict:
        """How many clients connected to the pod's listener would no longer verify against ``bundle`` (a candidate
        client-CA bundle), by issuer: the broker's ``POST /api/v5/listeners/{id}/client_ca_check``."""
        status, payload = await self._call("POST", pod, f"/listeners/{listener_id}/client_ca_check", token,
                                           body={"ca_pem": bundle.decode("utf-8", "replace")})
        if status != 200 or not isinstance(payload, dict):
            detail = payload.get("message") if isinstance(payload, dict) else None
            raise SignalError(pod.name, f"client-CA check of {listener_id}: HTTP {status}"
                                        f"{': ' + str(detail) if detail else ''}", status)
        return payload

    async def cluster_status(self, pod: PodTarget, token: str) -> dict | None:
        """The pod's cluster status from /healthz (node, backplane, members); None for a standalone broker."""
        status, payload = await self._call("GET", pod, "/healthz", token)
        if status != 200 or not isinstance(payload, dict):
            raise SignalError(pod.name, f"health: HTTP {status}", status)
        cluster = payload.get("cluster")
        return cluster if isinstance(cluster, dict) else None

    async def update_ssl_options(self, pod: PodTarget, token: str, listener_id: str, options: dict) -> None:
        status, payload = await self._call("PUT", pod, f"/listeners/{listener_id}", token,
                                           body={"ssl_options": options})
        if status != 200:
            detail = payload.get("message") if isinstance(payload, dict) else payload
            raise SignalError(pod.name, f"update of {listener_id} refused: HTTP {status} {detail or ''}", status)

    async def rotate(self, pods: Sequence[PodTarget], token: str, listener_id: str, fingerprint: str | None,
                     wait_seconds: float, client_ca_sha256: str | None = None) -> RotationResult:
        """Signal every pod at once; the result says how many serve it and how long the slowest took."""
        started = time.monotonic()
        outcomes = await asyncio.gather(*(self.reload(pod, token, listener_id, fingerprint, wait_seconds,
                                                      client_ca_sha256) for pod in pods))
        return RotationResult(list(outcomes), time.monotonic() - started)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
