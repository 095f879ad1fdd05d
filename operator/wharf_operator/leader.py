"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection (controller-runtime) does it.

Two or more operator replicas run; one holds the Lease and operates, the others wait and touch nothing (they do
not start kopf at all, so they neither reconcile nor signal pods).

- A candidate takes the Lease when it is free: absent, released (no holder), or not renewed for
  ``lease_duration`` seconds *as observed by this candidate* (the time it last saw the record change, from its own
  monotonic clock, never the holder's timestamps: clocks of two nodes need not agree).
- The holder renews it every ``retry_period`` seconds. Every write is an update with the resourceVersion read, so
  two candidates can never both succeed (the API server answers 409 to the second).
- A holder that could not renew for ``renew_deadline`` seconds, or finds another holder in the record, has lost
  it: ``hold`` calls ``on_lost`` at once (the CLI ends the process, as controller-runtime does; the Deployment
  starts it again as a candidate). ``renew_deadline`` < ``lease_duration``, so it stops before anyone may take over.
- On a clean stop the holder releases the Lease (no holder, duration 1 s), so a standby takes over at its next try.

Defaults as controller-runtime's: lease 15 s, renew deadline 10 s, retry 2 s: a killed leader is replaced within
about 15-17 s, a stopped one within about 2 s.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from .kube import ApiError, KubeApi, Resource

LEASES = Resource("coordination.k8s.io", "v1", "leases")
log = logging.getLogger("wharf_operator.leader")
_FAILURES = (ApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class LeaseTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")


def micro_time(moment: datetime.datetime | None = None) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    moment = moment or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: KubeApi, namespace: str, name: str, identity: str, timing: LeaseTiming | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self._clock = clock
        self._observed: dict | None = None  # the Lease's spec as last read
        self._observed_at = 0.0  # when (own clock) the spec was last seen to change
        self._resource_version: str | None = None

    def _observe(self, lease: dict) -> dict:
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed, self._observed_at = spec, self._clock()
        self._resource_version = (lease.get("metadata") or {}).get("resourceVersion")
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True if this candidate holds the Lease afterwards."""
        now = micro_time()
        duration = int(round(self.timing.lease_duration))
        lease = await self.api.get(LEASES, self.namespace, self.name)
        if lease is None:
            body = {"apiVersion": LEASES.api_version, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self._observe(await self.api.create(LEASES, self.namespace, body))
            except ApiError as exc:
                if exc.status == 409:  # another candidate created it first
                    return False
                raise
            return True
        spec = self._observe(lease)
        holder = spec.get("holderIdentity") or ""
        held_for = float(spec.get("leaseDurationSeconds") or duration)
        if holder and holder != self.identity and self._clock() - self._observed_at < held_for:
            return False  # held by another, renewed within its duration as far as this candidate has seen
        new_spec = dict(spec)
        new_spec.update(holderIdentity=self.identity, leaseDurationSeconds=duration, renewTime=now)
        if holder != self.identity:
            new_spec.update(acquireTime=now, leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1)
        body = {**lease, "spec": new_spec}
        body["metadata"] = {**lease["metadata"], "resourceVersion": self._resource_version}
        try:
            self._observe(await self.api.request("PUT", LEASES.path(self.namespace, self.name), body=body))
        except ApiError as exc:
            if exc.status == 409:  # someone wrote it since the read: read again next time
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Return once this candidate holds the Lease (try every ``retry_period``)."""
        logged = False
        while True:
            try:
                if await self.try_acquire_or_renew():
                    log.info("leader election: %s holds Lease %s/%s", self.identity, self.namespace, self.name)
                    return
                if not logged:
                    log.info("leader election: Lease %s/%s is held by %s; standing by", self.namespace, self.name,
                             (self._observed or {}).get("holderIdentity"))
                    logged = True
            except _FAILURES as exc:
                log.warning("leader election: cannot read or write Lease %s/%s: %s", self.namespace, self.name, exc)
            await asyncio.sleep(self.timing.retry_period)

    async def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew every ``retry_period``; call ``on_lost`` (and return) once another holds the Lease or no renewal
        succeeded for ``renew_deadline`` seconds."""
        renewed = self._clock()
        while True:
            await asyncio.sleep(self.timing.retry_period)
            try:
                attempt = asyncio.wait_for(self.try_acquire_or_renew(),
                                           max(0.1, self.timing.renew_deadline - (self._clock() - renewed)))
                if await attempt:
                    renewed = self._clock()
                    continue
                holder = (self._observed or {}).get("holderIdentity")
                if holder and holder != self.identity:
                    log.error("leader election: Lease %s/%s is now held by %s", self.namespace, self.name, holder)
                    on_lost()
                    return
            except _FAILURES as exc:
                log.warning("leader election: renewing Lease %s/%s failed: %s", self.namespace, self.name, exc)
            if self._clock() - renewed >= self.timing.renew_deadline:
                log.error("leader election: Lease %s/%s not renewed for %.0fs", self.namespace, self.name,
                          self.timing.renew_deadline)
                on_lost()
                return

    async def release(self) -> None:
        """Give the Lease up (a clean stop): no holder, so a standby takes it at its next try."""
        try:
            lease = await self.api.get(LEASES, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update(holderIdentity=None, leaseDurationSeconds=1, renewTime=micro_time())
            await self.api.request("PUT", LEASES.path(self.namespace, self.name), body=lease)
            log.info("leader election: released Lease %s/%s", self.namespace, self.name)
        except _FAILURES as exc:
            log.warning("leader election: releasing Lease %s/%s failed: %s", self.namespace, self.name, exc)
