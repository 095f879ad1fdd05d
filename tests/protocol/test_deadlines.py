"""``Deadlines``: connection deadlines in one-second buckets under one timer (idle timeout, keep-alive)."""

from __future__ import annotations

import asyncio

from wharf_broker.deadlines import Deadlines


class Watched:
    """What ``Deadlines`` needs of a connection: its bucket, and an answer when its deadline has come."""

    def __init__(self, name: str, answers: list[float | None] | None = None) -> None:
        self.name = name
        self.peer_text = name
        self.deadline_slot = 0
        self.reached: list[float] = []
        self.answers = answers or []

    def deadline_reached(self, now: float) -> float | None:
        self.reached.append(now)
        return self.answers.pop(0) if self.answers else None


async def test_a_deadline_is_met_within_the_second_after_it_and_only_once():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda: loop)
    soon, later = Watched("soon"), Watched("later")
    start = loop.time()
    deadlines.watch(soon, start + 0.3)
    deadlines.watch(later, start + 60)
    assert len(deadlines) == 2
    await asyncio.sleep(1.6)
    assert len(soon.reached) == 1 and start + 0.3 <= soon.reached[0] <= start + 1.6
    assert later.reached == [] and soon.deadline_slot == 0 and later.deadline_slot != 0
    assert len(deadlines) == 1
    deadlines.close()
    assert later.deadline_slot == 0 and len(deadlines) == 0


async def test_a_connection_names_its_next_deadline_and_forgotten_ones_are_never_called():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda: loop)
    start = loop.time()
    moving = Watched("moving", answers=[start + 1.2])  # a packet arrived meanwhile: the keep-alive moves on
    gone = Watched("gone")
    deadlines.watch(moving, start + 0.1)
    deadlines.watch(gone, start + 0.1)
    deadlines.forget(gone)
    await asyncio.sleep(2.8)
    assert gone.reached == [] and gone.deadline_slot == 0
    assert len(moving.reached) == 2 and moving.reached[1] >= start + 1.2
    assert len(deadlines) == 0
    deadlines.close()


async def test_watching_again_replaces_the_earlier_deadline():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda: loop)
    connection = Watched("c")
    deadlines.watch(connection, loop.time() + 0.1)  # the idle timeout ...
    deadlines.watch(connection, loop.time() + 30)  # ... replaced by the keep-alive at CONNACK
    assert len(deadlines) == 1
    await asyncio.sleep(1.5)
    assert connection.reached == []
    deadlines.close()


async def test_a_tick_costs_the_connections_due_not_all_of_them():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda: loop)
    start = loop.time()
    idle = [Watched(f"idle-{i}") for i in range(5000)]
    for number, connection in enumerate(idle):
        deadlines.watch(connection, start + 100 + number % 50)
    due = [Watched(f"due-{i}") for i in range(3)]
    for connection in due:
        deadlines.watch(connection, start + 0.2)
    await asyncio.sleep(1.5)
    assert all(len(connection.reached) == 1 for connection in due)
    assert not any(connection.reached for connection in idle)
    deadlines.close()


async def test_a_failing_connection_does_not_stop_the_others_in_its_second():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda: loop)

    class Broken(Watched):
        def deadline_reached(self, now: float) -> float | None:
            raise RuntimeError("bug")

    fine = Watched("fine")
    for connection in (Broken("broken"), fine, Broken("broken-2")):
        deadlines.watch(connection, loop.time() + 0.1)
    await asyncio.sleep(1.5)
    assert len(fine.reached) == 1
    deadlines.close()
