"""Losses under QoS 1 load when a broker node and a NATS node die: none for acknowledged messages.

A publisher sends numbered QoS 1 messages in pipelined batches to broker node 0; a persistent subscriber on
node 2 and another on node 1 collect them. Midway node 0 is killed (SIGKILL): the publisher moves to node 1
and sends again whatever was not acknowledged. Later the NATS server node 2 is connected to is killed: node 2
reconnects to another NATS server and replays what it missed. Every message the publisher saw acknowledged
must reach both subscribers.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from .mqtt_client import Client, await_route

pytestmark = pytest.mark.timeout(300)

TOTAL = 1500
BATCH = 25
KILL_BROKER_AT = 500
KILL_NATS_AT = 1000


def tcp(node) -> int:
    return node.port("tcp:default")


def nats_server_of(node) -> str:
    status, body = node.admin("GET", "/healthz", token=None)
    assert status == 200
    return json.loads(body)["cluster"]["backplane"]["server"]


def test_no_acknowledged_message_lost_when_a_broker_and_a_nats_node_die(cluster_nodes, nats_cluster):
    nodes = cluster_nodes(3)
    subscribers = []
    for index in (1, 2):
        sub = Client(tcp(nodes[index]), f"collector-{index}", clean=False, session_expiry=600)
        sub.connect()
        sub.subscribe("load/#", 1)
        subscribers.append(sub)
    publisher = Client(tcp(nodes[0]), "loader")
    publisher.connect()
    await_route(publisher, subscribers, "load/probe")

    acked: set[int] = set()
    pending = list(range(TOTAL))
    broker_killed = nats_killed = False
    refused = 0
    deadline = time.monotonic() + 200
    while pending:
        assert time.monotonic() < deadline, f"publishing did not finish; {len(pending)} left"
        if not broker_killed and len(acked) >= KILL_BROKER_AT:
            nodes[0].stop(signal.SIGKILL)
            broker_killed = True
        if not nats_killed and len(acked) >= KILL_NATS_AT:
            server = nats_server_of(nodes[2])
            victim = next(n for n in nats_cluster.nodes if server.endswith(f":{n.client_port}"))
            victim.kill()
            nats_killed = True
        batch, pending = pending[:BATCH], pending[BATCH:]
        infos = []
        for seq in batch:
            try:
                infos.append((seq, publisher.publish(f"load/{seq % 4}", str(seq), 1)))
            except (OSError, ValueError):
                infos.append((seq, None))
        for seq, info in infos:
            ok = False
            if info is not None:
                # Once the connection is gone nothing more will be acknowledged on it: no waiting then.
                give_up = time.monotonic() + 30
                while (publisher.acks.get(info.mid) is None and publisher.paho.is_connected()
                       and time.monotonic() < give_up):
                    try:
                        info.wait_for_publish(0.2)
                    except (RuntimeError, ValueError):
                        break
                    if info.is_published():
                        break
                ok = publisher.acks.get(info.mid) == 0
            if ok:
                acked.add(seq)
            else:
                refused += 1
                pending.append(seq)  # not acknowledged: the publisher sends it again
        if not publisher.paho.is_connected():
            publisher.paho.loop_stop()
            publisher = Client(tcp(nodes[1]), "loader")
            publisher.connect()
    assert broker_killed and nats_killed
    assert len(acked) == TOTAL
    # Node 2 really lost its NATS server and came back through another one.
    nodes[2].wait_for_log(r"reconnected to NATS", timeout=30)
    print(f"refused or unacknowledged sends: {refused}")

    for index, sub in zip((1, 2), subscribers):
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while not acked <= seen and time.monotonic() < deadline:
            for message in sub.take(TOTAL, timeout=2):
                if message.topic != "load/probe":
                    seen.add(int(message.payload))
        lost = sorted(acked - seen)
        assert not lost, f"node {index}: {len(lost)} acknowledged messages lost, first {lost[:20]}"
    print(nodes[2].log[-1500:])
    publisher.close()
    for sub in subscribers:
        sub.close()


def test_no_acknowledged_message_lost_when_the_subscribers_node_dies(cluster_nodes):
    """The persistent subscriber's node is killed mid-load; the subscriber comes back on another node and
    gets every acknowledged message (from the session hand-over replay of the stream)."""
    nodes = cluster_nodes(3)
    collector = Client(tcp(nodes[2]), "collector", clean=False, session_expiry=600)
    collector.connect()
    collector.subscribe("load/#", 1)
    publisher = Client(tcp(nodes[0]), "loader")
    publisher.connect()
    await_route(publisher, [collector], "load/probe")

    acked: set[int] = set()
    killed = False
    deadline = time.monotonic() + 150
    for start in range(0, TOTAL, BATCH):
        assert time.monotonic() < deadline, "publishing did not finish"
        if not killed and len(acked) >= KILL_BROKER_AT:
            nodes[2].stop(signal.SIGKILL)
            collector.paho.loop_stop()
            killed = True
        infos = [(seq, publisher.publish(f"load/{seq % 4}", str(seq), 1)) for seq in range(start, start + BATCH)]
        for seq, info in infos:
            info.wait_for_publish(20)
            if publisher.acks.get(info.mid) in (0, 0x10):  # success, or "no matching subscribers"
                acked.add(seq)
    assert killed and len(acked) == TOTAL

    back = Client(tcp(nodes[1]), "collector", clean=False, session_expiry=600)
    assert back.connect() is True, "the session survived its node"
    seen: set[int] = {int(m.payload) for m in collector.drain() if m.topic != "load/probe"}
    deadline = time.monotonic() + 90
    while not acked <= seen and time.monotonic() < deadline:
        for message in back.take(TOTAL, timeout=2):
            if message.topic != "load/probe":
                seen.add(int(message.payload))
    lost = sorted(acked - seen)
    assert not lost, f"{len(lost)} acknowledged messages lost, first {lost[:20]}\n{nodes[1].log[-3000:]}"
    back.close()
    publisher.close()


def test_sessions_of_a_node_restarted_under_its_name_are_recovered(nats_cluster, broker_process):
    """A StatefulSet Pod comes back with its name but without its memory: its persistent sessions are restored
    from the registry and the stream, whether the client returns to it or goes to another node."""
    from .conftest import node_config

    other = broker_process(node_config("steady@127.0.0.1", nats_cluster.urls), timeout=60)
    restarting_config = node_config("phoenix@127.0.0.1", nats_cluster.urls)
    phoenix = broker_process(restarting_config, timeout=60)
    clients = {}
    for name in ("stays", "moves"):
        client = Client(tcp(phoenix), name, clean=False, session_expiry=600)
        client.connect()
        client.subscribe(f"news/{name}", 1)
        clients[name] = client
    publisher = Client(tcp(other), "pub")
    publisher.connect()
    for name, client in clients.items():
        await_route(publisher, [client], f"news/{name}")
    phoenix.stop(signal.SIGKILL)
    for client in clients.values():
        client.paho.loop_stop()
    for n in range(30):
        for name in clients:
            assert publisher.publish_acked(f"news/{name}", f"{name}-{n}", 1) in (0, 0x10)
    reborn = broker_process(restarting_config, timeout=60)
    back = {"stays": Client(tcp(reborn), "stays", clean=False, session_expiry=600),
            "moves": Client(tcp(other), "moves", clean=False, session_expiry=600)}
    for name, client in back.items():
        assert client.connect() is True, f"{name}: session present"
        seen = set()
        deadline = time.monotonic() + 60
        while len(seen) < 30 and time.monotonic() < deadline:
            seen |= {m.payload.decode() for m in client.take(30, timeout=2)}
        assert {f"{name}-{n}" for n in range(30)} <= seen, f"{name} got {sorted(seen)}"
        client.close()
    publisher.close()
