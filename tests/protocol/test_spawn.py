"""``tasks.spawn``: a task nobody awaits still runs to its end (the loop alone keeps only a weak reference to it),
and its reference goes once it is done."""

from __future__ import annotations

import asyncio
import gc

from wharf_broker import tasks


async def test_a_dropped_task_runs_to_its_end_and_is_then_let_go():
    release = asyncio.Event()
    finished: list[str] = []

    async def background() -> None:
        await release.wait()
        finished.append("done")

    before = tasks.running()
    tasks.spawn(background())  # the result is dropped on purpose
    gc.collect()
    assert tasks.running() == before + 1
    release.set()
    for _ in range(10):
        if finished:
            break
        await asyncio.sleep(0)
    assert finished == ["done"]
    await asyncio.sleep(0)  # done callbacks run one loop step after the task ends
    assert tasks.running() == before


async def test_a_callers_set_holds_its_tasks_until_they_end():
    keep: set[asyncio.Task] = set()
    release = asyncio.Event()
    task = tasks.spawn(release.wait(), keep)
    assert keep == {task}
    release.set()
    assert await task is True
    await asyncio.sleep(0)
    assert keep == set()
