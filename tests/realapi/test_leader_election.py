"""``wharf_operator.leader`` against the real API server (short timings): of candidates racing for a free Lease
exactly one wins; a standby takes a Lease only once it went unrenewed for its duration (by the standby's own
clock); a holder that finds another holder in the Lease, or cannot renew it within its deadline, gives up at once;
a released Lease is taken at the next try.
"""

from __future__ import annotations

import asyncio
import time

import kubernetes
import pytest
from realapi_support import unique_name
from wharf_operator import credentials
from wharf_operator.leader import LeaderElector, LeaseTiming, micro_time

TIMING = LeaseTiming(lease_duration=3.0, renew_deadline=2.0, retry_period=0.5)


def _electors(controlplane, namespace: str, lease: str, names: list[str]) -> list[LeaderElector]:
    creds = credentials.load(str(controlplane.kubeconfig))
    return [LeaderElector(creds.api(), namespace, lease, name, TIMING) for name in names]


def _holder(api, namespace: str, lease: str) -> str | None:
    return kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(lease, namespace).spec.holder_identity


@pytest.mark.timeout(120)
def test_one_winner_takeover_after_expiry_and_release(controlplane, api, namespace):
    lease = unique_name("lease")

    async def scenario() -> tuple[float, float]:
        a, b, c = _electors(controlplane, namespace, lease, ["a", "b", "c"])
        try:
            # Three candidates at once, for a Lease that does not exist yet: one wins, the others are refused.
            results = await asyncio.gather(*(e.try_acquire_or_renew() for e in (a, b, c)))
            assert sum(results) == 1, results
            holder = next(e for e, won in zip((a, b, c), results, strict=True) if won)
            others = [e for e in (a, b, c) if e is not holder]
            assert _holder(api, namespace, lease) == holder.identity
            # While it renews, nobody else gets it.
            for _ in range(8):
                assert await holder.try_acquire_or_renew()
                assert not any([await e.try_acquire_or_renew() for e in others])
                await asyncio.sleep(TIMING.retry_period)
            # It stops renewing (as if killed): a standby takes it once the duration has passed.
            stopped = time.monotonic()
            await asyncio.wait_for(others[0].acquire(), 30)
            expired = time.monotonic() - stopped
            assert expired >= TIMING.lease_duration - TIMING.retry_period, expired
            assert _holder(api, namespace, lease) == others[0].identity
            # A clean stop releases it; the last candidate takes it at its next try.
            await others[0].release()
            released = time.monotonic()
            await asyncio.wait_for(others[1].acquire(), 30)
            return expired, time.monotonic() - released
        finally:
            for e in (a, b, c):
                await e.api.close()

    expired, released = asyncio.run(scenario())
    print(f"\nLease taken over {expired:.2f}s after its holder stopped renewing (duration {TIMING.lease_duration}s), "
          f"{released:.2f}s after a release")
    lease_obj = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(lease, namespace)
    assert lease_obj.spec.lease_transitions == 2


@pytest.mark.timeout(120)
def test_holder_gives_up_when_another_holds_the_lease(controlplane, api, namespace):
    lease = unique_name("lease")

    async def scenario() -> float:
        (a,) = _electors(controlplane, namespace, lease, ["a"])
        try:
            await a.acquire()
            lost = asyncio.Event()
            holding = asyncio.ensure_future(a.hold(lost.set))
            await asyncio.sleep(2 * TIMING.retry_period)
            assert not lost.is_set() and not holding.done()
            # Someone else writes itself into the Lease (as a partitioned-away leader would find on return).
            coordination = kubernetes.client.CoordinationV1Api(api)
            await asyncio.to_thread(coordination.patch_namespaced_lease, lease, namespace,
                                    {"spec": {"holderIdentity": "intruder", "renewTime": micro_time()}})
            taken = time.monotonic()
            await asyncio.wait_for(lost.wait(), 10)
            await asyncio.wait_for(holding, 5)
            return time.monotonic() - taken
        finally:
            await a.api.close()

    gave_up = asyncio.run(scenario())
    print(f"\nholder gave up {gave_up:.2f}s after another wrote itself into the Lease")
    assert gave_up <= 2 * TIMING.retry_period + 1
    assert _holder(api, namespace, lease) == "intruder"


@pytest.mark.timeout(60)
def test_holder_gives_up_when_it_cannot_renew(controlplane, api, namespace):
    lease = unique_name("lease")

    async def scenario() -> float:
        (a,) = _electors(controlplane, namespace, lease, ["a"])
        try:
            await a.acquire()
            # The API server becomes unreachable for it (renewals go to a closed port): the renew deadline passes.
            a.api.server = "https://127.0.0.1:9"  # discard port: connection refused
            lost = asyncio.Event()
            started = time.monotonic()
            await asyncio.wait_for(a.hold(lost.set), 20)
            assert lost.is_set()
            return time.monotonic() - started
        finally:
            await a.api.close()

    gave_up = asyncio.run(scenario())
    print(f"\nholder that cannot renew gave up after {gave_up:.2f}s (deadline {TIMING.renew_deadline}s)")
    assert TIMING.renew_deadline <= gave_up <= TIMING.renew_deadline + 2 * TIMING.retry_period
