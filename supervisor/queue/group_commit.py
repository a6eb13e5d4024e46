"""Group commit: statements that arrive while one is in flight share the next one.

The first item goes at once (no added latency when the worker is quiet); items
submitted while its round trip runs wait for it and then go together, as one
statement (PostgreSQL's own group commit, one level up). Used by the pre-upload
fence (fence.py) and the fenced completion (queue.py): under load, one round trip
and one WAL flush serve many jobs, and each job still gets its own answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

MAX_BATCH = 200  # bounds one statement's arrays (and a batch's share of a failure)


class GroupCommit(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run: Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT]]],
        *,
        cancelled: Callable[[ItemT], BaseException | None],
        max_batch: int = MAX_BATCH,
    ) -> None:
        """`run` does one batch and returns one result per item, in order.

        `cancelled(item)` is the exception a waiter gets when the batch task is
        cancelled (shutdown), or None to cancel the waiter: nobody waits forever, and
        nobody takes silence for success. (A statement cancelled mid-flight may still
        have committed, so a completion's waiter must not read it as "claim lost".)
        """
        self._run = run
        self._cancelled = cancelled
        self._max_batch = max_batch
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: ItemT) -> ResultT:
        ticket: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, ticket))
        if self._task is None:
            # Not a TaskOwner task: it lives only while a burst drains, and every outcome,
            # failure or cancellation included, reaches the waiter that submitted the item.
            self._task = asyncio.create_task(self._drain(), name="group-commit")
        return await ticket

    async def _drain(self) -> None:
        batch: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch:]
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as exc:  # every waiter of this batch sees the failure
                    for _, ticket in batch:
                        if not ticket.done():
                            ticket.set_exception(exc)
                    continue
                for (_, ticket), result in zip(batch, results, strict=True):
                    if not ticket.done():
                        ticket.set_result(result)
                batch = []
        finally:
            self._task = None
            for item, ticket in [*batch, *self._waiting]:
                if not ticket.done():
                    error = self._cancelled(item)
                    if error is None:
                        ticket.cancel()
                    else:
                        ticket.set_exception(error)
            self._waiting = []
