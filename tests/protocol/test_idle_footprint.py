"""What an idle connected client keeps in the broker: only what it uses (issue #18, docs/scale.md).

Its session's dicts are the one shared ``lazy.EMPTY`` until it subscribes or has messages in flight, its parser
holds no buffer between packets, and its keep-alive is a bucket entry in the broker's ``Deadlines``, not a timer.
"""

from __future__ import annotations

import pytest

from wharf_broker.lazy import EMPTY, own


def test_the_shared_empty_dict_refuses_writes_and_own_gives_a_dict_of_ones_own():
    with pytest.raises(TypeError):
        EMPTY["x"] = 1
    with pytest.raises(TypeError):
        EMPTY.update(x=1)
    with pytest.raises(TypeError):
        EMPTY.setdefault("x", 1)
    assert not EMPTY and EMPTY.get("x") is None and EMPTY.pop("x", None) is None
    mine = own(EMPTY)
    assert mine == {} and mine is not EMPTY and own(mine) is mine


async def test_idle_clients_share_empty_session_parts_and_wait_in_deadline_buckets(make_broker):
    running = await make_broker()
    broker = running.broker
    clients = [await running.client(f"idle-{n}", keepalive=60) for n in range(5)]
    for n in range(5):
        channel = broker.channels[f"idle-{n}"]
        session = channel.session
        assert session.subscriptions is EMPTY and session.awaiting_rel is EMPTY
        assert session.inflight.entries is EMPTY
        connection = channel.connection
        assert connection.parser.buffered == 0 and connection.deadline_slot > 0
    assert len(broker.deadlines) == 5

    # Used, they get dicts of their own: one client's subscription is not another's.
    await clients[0].subscribe("a/b", qos=1)
    first, second = broker.channels["idle-0"].session, broker.channels["idle-1"].session
    assert "a/b" in first.subscriptions and first.subscriptions is not EMPTY
    assert second.subscriptions is EMPTY
    for client in clients:
        await client.disconnect()
