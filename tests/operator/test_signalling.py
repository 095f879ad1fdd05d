"""The operator's calls to broker admin APIs, against real HTTP servers on loopback addresses."""

from __future__ import annotations

import asyncio
import socket

import pytest
from kmock_support import FakeBrokerPod
from wharf_operator.signalling import (
    LOOPBACK_ONLY,
    AddressNotAllowed,
    BrokerAdmin,
    PodTarget,
)

FP_OLD, FP_NEW = "a" * 64, "b" * 64


@pytest.fixture
async def pods():
    started = [await FakeBrokerPod(f"wharf-{i}", f"127.0.0.{i + 2}", token="tkn").start() for i in range(2)]
    for pod in started:
        pod.files["ssl:mqtts"] = pod.served["ssl:mqtts"] = FP_OLD
    yield started
    for pod in started:
        await pod.stop()


@pytest.fixture
async def admin():
    client = BrokerAdmin(LOOPBACK_ONLY, connect_timeout=1.0, request_timeout=2.0)
    yield client
    await client.close()


def _targets(pods):
    return [PodTarget(p.name, p.ip, p.port) for p in pods]


async def test_rotation_waits_for_the_files_then_every_pod_serves_it(pods, admin):
    async def kubelet_projects_later():
        await asyncio.sleep(0.2)
        for pod in pods:
            pod.files["ssl:mqtts"] = FP_NEW

    projecting = asyncio.create_task(kubelet_projects_later())
    result = await admin.rotate(_targets(pods), "tkn", "ssl:mqtts", FP_NEW, wait_seconds=5)
    await projecting
    assert result.serving == 2 and result.errors == []
    assert all(pod.served["ssl:mqtts"] == FP_NEW for pod in pods)
    assert [r["fingerprint"] for pod in pods for r in pod.reloads] == [FP_NEW, FP_NEW]
    assert all(r["timeout"] == 5 for pod in pods for r in pod.reloads)
    assert result.seconds > 0


async def test_fingerprint_that_never_arrives_is_a_409_and_the_old_one_keeps_serving(pods, admin):
    result = await admin.rotate(_targets(pods), "tkn", "ssl:mqtts", FP_NEW, wait_seconds=0.1)
    assert result.serving == 0
    assert all("did not reach the pod's files in time" in e for e in result.errors)
    assert all(o.status == 409 for o in result.outcomes)
    assert all(pod.served["ssl:mqtts"] == FP_OLD for pod in pods)


async def test_material_the_broker_refuses_is_a_422(pods, admin):
    pods[0].refuse.add("ssl:mqtts")
    pods[0].files["ssl:mqtts"] = pods[1].files["ssl:mqtts"] = FP_NEW
    result = await admin.rotate(_targets(pods), "tkn", "ssl:mqtts", FP_NEW, wait_seconds=1)
    assert result.serving == 1
    assert result.outcomes[0].status == 422 and "refused the new material" in result.outcomes[0].error


async def test_wrong_token_is_not_success(pods, admin):
    pods[0].files["ssl:mqtts"] = FP_NEW
    outcome = await admin.reload(_targets(pods)[0], "wrong", "ssl:mqtts", FP_NEW, 1)
    assert not outcome.ok and outcome.status == 401
    assert pods[0].unauthorized == 1 and pods[0].served["ssl:mqtts"] == FP_OLD


async def test_served_certificate_and_live_update(pods, admin):
    target = _targets(pods)[0]
    assert (await admin.served_certificate(target, "tkn", "ssl:mqtts"))["fingerprint_sha256"] == FP_OLD
    await admin.update_ssl_options(target, "tkn", "ssl:mqtts", {"versions": ["tlsv1.3"]})
    assert pods[0].updates == [("ssl:mqtts", {"ssl_options": {"versions": ["tlsv1.3"]}})]


async def test_unreachable_pod_is_reported_within_the_timeout(admin):
    # A loopback port nobody listens on: connection refused, reported as an error (not raised).
    with socket.socket() as probe:
        probe.bind(("127.0.0.9", 0))
        port = probe.getsockname()[1]
    outcome = await admin.reload(PodTarget("gone", "127.0.0.9", port), "tkn", "ssl:mqtts", FP_NEW, 0.1)
    assert not outcome.ok and "gone" in outcome.error


async def test_a_silent_pod_times_out(admin):
    # A listening socket that never answers HTTP: the total timeout ends the call.
    server = await asyncio.start_server(lambda r, w: asyncio.sleep(10), "127.0.0.10", 0)
    port = server.sockets[0].getsockname()[1]
    quick = BrokerAdmin(LOOPBACK_ONLY, connect_timeout=0.5, request_timeout=0.3)
    try:
        outcome = await quick.reload(PodTarget("mute", "127.0.0.10", port), "tkn", "ssl:mqtts", None, 0)
    finally:
        await quick.close()
        server.close()
    assert not outcome.ok and "no answer" in outcome.error


@pytest.mark.parametrize("ip", ["10.0.0.7", "192.168.1.2", "172.16.0.1", "8.8.8.8", "::1"])
async def test_guard_refuses_addresses_outside_the_allowed_networks_before_connecting(admin, ip):
    with pytest.raises(AddressNotAllowed):
        await admin.reload(PodTarget("elsewhere", ip, 18083), "tkn", "ssl:mqtts", FP_NEW, 0)
    with pytest.raises(AddressNotAllowed):
        await admin.served_certificate(PodTarget("elsewhere", ip, 18083), "tkn", "ssl:mqtts")


def test_pod_target_from_pod_objects():
    running = {"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "127.0.0.5"},
               "spec": {"containers": [{"ports": [{"name": "admin", "containerPort": 4000}]}]}}
    assert PodTarget.from_pod(running) == PodTarget("p", "127.0.0.5", 4000)
    assert PodTarget.from_pod({**running, "status": {"phase": "Pending"}}) is None
    assert PodTarget.from_pod({**running, "status": {"phase": "Running"}}) is None
    terminating = {**running, "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert PodTarget.from_pod(terminating) is None
