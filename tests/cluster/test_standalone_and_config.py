"""Without a cluster section the broker needs no NATS; the cluster section binds and is validated."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from wharf_broker.config.errors import ConfigError
from wharf_broker.config.loader import load_string

from .mqtt_client import Client


def test_standalone_broker_never_imports_nats(tmp_path):
    # A real broker started the ordinary way, in a process of its own; it serves a client, and nothing in it
    # has imported the NATS client or the cluster package.
    script = textwrap.dedent("""
        import asyncio, sys
        from wharf_broker.app import BrokerApp
        from wharf_broker.config.loader import load_string

        async def main():
            app = BrokerApp(load_string('listeners.tcp.default { bind = "127.0.0.1:0" }\\n'
                                        'dashboard.enable = false'))
            await app.start()
            port = int(app.listeners["tcp:default"].bind.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 1]) + b"c")
            connack = await reader.readexactly(4)
            writer.close()
            await app.stop()
            loaded = sorted(name for name in sys.modules if name == "nats" or name.startswith("nats.")
                            or name.startswith("wharf_broker.cluster"))
            print(connack.hex(), loaded)

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "20020000 []"


def test_cluster_section_binds():
    config = load_string("""
        node.name = "wharf-a@10.0.0.1"
        cluster {
          enable = true
          nats {
            servers = ["nats://n1:4222", "nats://n2:4222"]
            credentials = "/etc/wharf/nats.creds"
            tls { enable = true, cacertfile = "/ca.pem", server_name = "nats.wharf" }
          }
          replicas = 1
          stream_max_age = 2h
        }
    """)
    cluster = config.cluster
    assert cluster.enable
    assert cluster.nats.servers == ["nats://n1:4222", "nats://n2:4222"]
    assert cluster.nats.tls.enable and cluster.nats.tls.server_name == "nats.wharf"
    assert cluster.nats.credentials == "/etc/wharf/nats.creds"
    assert cluster.replicas == 1 and cluster.stream_max_age == 7200.0
    assert load_string("").cluster.enable is False


def test_unknown_cluster_key_is_an_error():
    with pytest.raises(ConfigError) as error:
        load_string('cluster { enable = true, nats { server = "nats://x:4222" } }')
    assert "cluster.nats.server" in str(error.value)


def test_cluster_node_refuses_to_start_without_nats(broker_process, tmp_path):
    from .conftest import free_port, node_config

    dead = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(AssertionError) as error:  # conftest's BrokerStartError
        broker_process(node_config("lonely@127.0.0.1", [dead]).replace("connect_timeout = 5s",
                                                                        "connect_timeout = 1s"), timeout=30)
    assert "exited with 1" in str(error.value)
    assert f"cannot reach NATS at {dead}" in str(error.value)


def test_mqtt_client_helper_is_real(broker_process):
    # The helper the cluster tests use, against a standalone broker: a QoS 1 round trip.
    broker = broker_process()
    client = Client(broker.port("tcp:default"), "helper")
    client.connect()
    client.subscribe("h/#", 1)
    assert client.publish_acked("h/1", "x", 1) == 0
    assert [m.payload for m in client.take(1)] == [b"x"]
    client.close()
