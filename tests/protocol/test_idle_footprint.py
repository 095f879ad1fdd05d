"""What an idle connected client keeps in the broker: only what it uses (issue #18, docs/scale.md).

Its session's dicts are the one shared ``lazy.EMPTY`` until it subscribes or has messages in flight, its parser
holds no buffer between packets, its keep-alive is a bucket entry in the broker's ``Deadlines``, not a timer, and the
housekeeping sweep passes it by.
"""

from __future__ import annotations

import asyncio

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


async def test_housekeeping_visits_only_sessions_with_something_in_flight(make_broker):
    running = await make_broker(retry_interval=0.2)
    broker = running.broker
    idle = [await running.client(f"quiet-{n}", version=4) for n in range(3)]
    sub = await running.client("sub", version=4)
    await sub.subscribe("t", qos=1)
    assert not broker._tended
    pub = await running.client("pub", version=4)
    await pub.publish("t", b"x", qos=1)
    first = await sub.recv()
    assert broker._tended == {broker.sessions["sub"]}
    again = await sub.recv(timeout=3)  # the 3.1.1 retry still comes from the sweep
    assert (again.packet_id, again.dup) == (first.packet_id, True)
    await sub.ack(again)
    for _ in range(40):  # acknowledged: the next sweep lets it go
        await asyncio.sleep(0.05)
        if not broker._tended:
            break
    assert not broker._tended
    for client in [*idle, sub, pub]:
        await client.disconnect()
