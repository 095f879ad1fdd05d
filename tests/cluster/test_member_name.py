"""A node's cluster member name, and a broker rendered by the operator joining an existing NATS through
``spec.config.cluster`` (one config for every replica: the member name comes from the Pod's host name)."""

from __future__ import annotations

import socket

import pytest
from wharf_broker.cluster.node import member_name
from wharf_broker.config.loader import load_string


def test_member_name_is_node_name_when_set():
    assert member_name(load_string('node.name = "wharf-a@10.1.2.3"')) == "wharf-a@10.1.2.3"


def test_member_name_defaults_to_the_host_name():
    assert member_name(load_string("")) == f"wharf@{socket.gethostname()}"


def test_operator_rendered_config_joins_an_existing_nats():
    render = pytest.importorskip("wharf_operator.render")
    from wharf_operator.crd import defaulted_spec

    spec = defaulted_spec({"config": {"cluster": {"enable": True,
                                                  "nats": {"servers": ["nats://nats.messaging:4222"]}}}})
    tree = render.config_tree(spec)
    assert "node" not in tree  # every replica shares this config
    config = load_string(render.to_hocon({"cluster": tree["cluster"]}))
    assert config.cluster.enable
    assert config.cluster.nats.servers == ["nats://nats.messaging:4222"]
    assert member_name(config) == f"wharf@{socket.gethostname()}"
