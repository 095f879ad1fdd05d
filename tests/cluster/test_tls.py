"""Broker nodes reach NATS over mutual TLS: real handshakes, the node's client certificate checked by NATS."""

from __future__ import annotations

import pytest

from .conftest import NatsCluster, node_config, require_nats
from .mqtt_client import Client, await_route

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def tls_nats(tmp_path, certs):
    require_nats()
    cluster = NatsCluster(tmp_path / "nats-tls", tls={"cert": certs / "server.crt", "key": certs / "server.key",
                                                      "ca": certs / "rootCA.crt"})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def tls_block(certs, with_client_cert: bool = True) -> str:
    client = f'certfile = "{certs / "client.crt"}", keyfile = "{certs / "client.key"}",' if with_client_cert else ""
    return f'tls {{ enable = true, cacertfile = "{certs / "rootCA.crt"}", {client} server_name = "localhost" }}'


def test_cross_node_delivery_over_mutual_tls(tls_nats, broker_process, certs):
    assert all(url.startswith("tls://") for url in tls_nats.urls)
    nodes = [broker_process(node_config(f"tls-{index}@127.0.0.1", tls_nats.urls, nats_extra=tls_block(certs)),
                            timeout=60) for index in range(2)]
    sub = Client(nodes[1].port("tcp:default"), "sub")
    sub.connect()
    sub.subscribe("secure/#", 1)
    pub = Client(nodes[0].port("tcp:default"), "pub")
    pub.connect()
    await_route(pub, [sub], "secure/probe")
    assert pub.publish_acked("secure/1", "over tls", 1) == 0
    assert [m.payload for m in sub.take(1)] == [b"over tls"]
    pub.close()
    sub.close()


def test_node_without_client_certificate_is_refused_by_nats(tls_nats, broker_process, certs):
    config = node_config("anon@127.0.0.1", tls_nats.urls, nats_extra=tls_block(certs, with_client_cert=False))
    config = config.replace("connect_timeout = 5s", "connect_timeout = 2s")
    with pytest.raises(AssertionError) as error:
        broker_process(config, timeout=60)
    assert "exited with 1" in str(error.value) and "cannot reach NATS" in str(error.value)
