"""spec.cluster with the real kopf operator against kmock: the deployed NATS' objects, switching between a
deployed and an existing NATS, cluster membership in the status, the warning for independent replicas."""

from __future__ import annotations

import pytest
from kmock_support import VersioningEmulator
from test_operator_kmock import NS, running_operator, tls_spec

from tests.support import eventually
from wharf_operator import nats, render
from wharf_operator.crd import defaulted_spec
from wharf_operator.kube import STATEFULSETS

pytestmark = pytest.mark.kmock(cls=VersioningEmulator)

NATS_OBJECTS = [("v1/configmaps", "wharf-nats-config"), ("v1/services", "wharf-nats"),
                ("v1/services", "wharf-nats-headless"), ("policy/v1/poddisruptionbudgets", "wharf-nats"),
                ("apps/v1/statefulsets", "wharf-nats")]
DEPLOY = {"nats": {"deploy": True, "tls": {"serverSecretName": "nats-server-tls",
                                            "clientSecretName": "nats-client-tls"}}}


@pytest.fixture
async def env(kmock):
    async with running_operator(kmock) as environment:
        yield environment


def _member_status(pod_name: str, connected: bool = True) -> dict:
    return {"node": f"wharf@{pod_name}", "backplane": {"connected": connected, "server": "nats-0:4222",
                                                       "last_error": None},
            "members": ["wharf@wharf-0", "wharf@wharf-1"]}


async def test_deployed_nats_is_owned_by_the_broker_and_membership_reaches_the_status(env):
    spec = tls_spec(cluster=DEPLOY)
    body = await env.create_broker(spec)
    await env.reconciled()
    for resource, name in NATS_OBJECTS:
        obj = await eventually(lambda r=resource, n=name: env.obj(r, n), f"{resource} {name}")
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
            ("MQTTBroker", "wharf", body["metadata"]["uid"], True)
    sts = env.obj("apps/v1/statefulsets", "wharf-nats")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # The brokers' config joins the deployed NATS over TLS, with the client Secret mounted.
    config = env.obj("v1/configmaps", "wharf-config")["data"]["wharf.conf"]
    assert config == render.render(defaulted_spec(spec), broker="wharf", namespace=NS)
    assert f"tls://wharf-nats-0.wharf-nats-headless.{NS}.svc:4222" in config
    broker_volumes = env.obj("apps/v1/statefulsets", "wharf")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "nats-tls", "secret": {"secretName": "nats-client-tls", "defaultMode": 0o440}} in broker_volumes

    # Nothing ready yet: NATS is not, and the condition says so.
    await eventually(lambda: env.condition("Clustered").get("reason") == "NatsNotReady", "NatsNotReady")
    assert env.status()["cluster"]["natsReady"] is False

    pods = await env.add_pods(2)
    for pod in pods:
        pod.cluster = _member_status(pod.name)
    # NATS becomes ready (as the StatefulSet controller would report): the operator asks every broker pod.
    await env.client.patch(STATEFULSETS, NS, "wharf-nats", {"status": {"replicas": 3, "readyReplicas": 3}})
    await eventually(lambda: env.condition("Clustered").get("status") == "True", "Clustered True")
    cluster = env.status()["cluster"]
    assert cluster["natsReady"] is True and cluster["natsReadyReplicas"] == 3
    assert cluster["members"] == ["wharf@wharf-0", "wharf@wharf-1"] and cluster["podsConnected"] == 2

    # A broker cut off from NATS: the membership says so at the next look.
    pods[1].cluster = _member_status(pods[1].name, connected=False)
    await env.client.patch(STATEFULSETS, NS, "wharf-nats", {"status": {"readyReplicas": 3, "replicas": 3,
                                                                       "observedGeneration": 2}})
    await eventually(lambda: env.condition("Clustered").get("reason") == "Forming", "Forming")
    assert env.status()["cluster"]["podsConnected"] == 1


async def test_switching_to_an_existing_nats_removes_the_deployed_one_and_back(env):
    await env.create_broker(tls_spec(cluster=DEPLOY))
    await env.reconciled()
    await eventually(lambda: env.obj("apps/v1/statefulsets", "wharf-nats"), "the NATS StatefulSet")

    # A merge patch: deploy and tls are cleared, as kubectl apply would.
    existing = {"nats": {"deploy": False, "tls": None, "servers": ["nats://nats.messaging.svc:4222"]},
                "streamReplicas": 1}
    await env.patch_broker({"spec": {"cluster": existing}})
    await eventually(lambda: all(env.obj(r, n) is None for r, n in NATS_OBJECTS), "the NATS objects deleted")
    config = await eventually(
        lambda: "nats://nats.messaging.svc:4222" in env.obj("v1/configmaps", "wharf-config")["data"]["wharf.conf"]
        and env.obj("v1/configmaps", "wharf-config")["data"]["wharf.conf"], "the config naming the existing NATS")
    assert "wharf-nats-headless" not in config

    await env.patch_broker({"spec": {"cluster": {"nats": {**DEPLOY["nats"], "servers": None}}}})
    await eventually(lambda: all(env.obj(r, n) is not None for r, n in NATS_OBJECTS), "the NATS objects again")


async def test_someone_elses_object_of_the_same_name_is_left_alone(env):
    await env.client.create(STATEFULSETS, NS, nats.stateful_set("wharf", NS, defaulted_spec(
        {"cluster": {"nats": {"deploy": True}}})))
    await env.create_broker(tls_spec())
    await env.reconciled()
    assert env.obj("apps/v1/statefulsets", "wharf-nats") is not None
    assert ("DELETE", f"/apis/apps/v1/namespaces/{NS}/statefulsets/wharf-nats") not in env.api.writes


async def test_replicas_without_cluster_are_flagged_independent(env):
    await env.create_broker(tls_spec())  # 2 replicas, no spec.cluster
    await env.reconciled()
    # Not a cluster, and not a broken one either: no Clustered condition (the warning event says what runs).
    await eventually(lambda: env.events("IndependentBrokers"), "an IndependentBrokers warning")
    assert env.condition("Clustered") == {}
    assert "cluster" not in env.status()
    assert env.obj("apps/v1/statefulsets", "wharf-nats") is None

    await env.patch_broker({"spec": {"replicas": 1}})
    await eventually(lambda: env.status().get("replicas") == 1, "the new spec reconciled")
    assert env.condition("Clustered") == {}  # a standalone broker is not shown as Clustered=False
