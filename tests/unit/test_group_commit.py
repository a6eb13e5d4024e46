"""Group commit (supervisor/queue/group_commit.py): what arrives while a batch runs goes in the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from supervisor.queue.group_commit import GroupCommit

pytestmark = pytest.mark.timeout(300)


class Lost(Exception):
    pass


async def test_the_first_item_goes_alone_and_the_rest_share_the_next_batch() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        await release.wait()
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(run, cancelled=lambda i: Lost(i))
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)  # the first batch is in flight
    rest = [asyncio.create_task(group.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]


async def test_a_failed_batch_fails_each_of_its_waiters_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def run(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database away")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(run, cancelled=lambda i: Lost(i))
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(group.submit(2))
    with pytest.raises(ConnectionError):
        await first
    assert await second == 2


async def test_batches_are_bounded() -> None:
    sizes: list[int] = []
    gate = asyncio.Event()

    async def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        await gate.wait()
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(run, cancelled=lambda i: Lost(i), max_batch=4)
    tasks = [asyncio.create_task(group.submit(i)) for i in range(10)]
    await asyncio.sleep(0)
    gate.set()
    assert [await t for t in tasks] == list(range(10))
    assert sizes == [4, 4, 2]  # all ten were queued before the first batch took its share


async def test_a_cancelled_batch_task_answers_every_waiter() -> None:
    """Shutdown cancels the batch task: its waiters get the `cancelled` answer (or are
    cancelled when it says None), never silence."""
    started = asyncio.Event()

    async def run(items: Sequence[int]) -> list[int]:
        started.set()
        await asyncio.sleep(3600)
        return list(items)

    lost: GroupCommit[int, int] = GroupCommit(run, cancelled=lambda i: Lost(i))
    waiter = asyncio.create_task(lost.submit(1))
    await started.wait()
    queued = asyncio.create_task(lost.submit(2))
    await asyncio.sleep(0)
    assert lost._task is not None
    lost._task.cancel()
    with pytest.raises(Lost):
        await waiter
    with pytest.raises(Lost):
        await queued

    started.clear()
    silent: GroupCommit[int, int] = GroupCommit(run, cancelled=lambda i: None)
    waiter = asyncio.create_task(silent.submit(1))
    await started.wait()
    assert silent._task is not None
    silent._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
