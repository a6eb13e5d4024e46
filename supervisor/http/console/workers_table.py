"""The console's workers table: every worker's heartbeat row, with this process's own
row replaced by a live reading."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from supervisor.http.console.store import ConsoleStore
from supervisor.queue.workers import WorkerRow, WorkerSnapshot, list_workers

LocalSnapshot = Callable[[], WorkerSnapshot | None]


class WorkersTable:
    def __init__(self, store: ConsoleStore, gone_seconds: int, local: LocalSnapshot | None) -> None:
        self.store = store
        self.gone_seconds = gone_seconds
        self.local = local

    async def rows(self) -> list[WorkerRow]:
        """The workers table, with this process's own row replaced by a live reading."""
        rows = await list_workers(await self.store.pool(), self.gone_seconds)
        live = self.local() if self.local is not None else None
        if live is None:
            return rows
        now = datetime.now(UTC)
        mine = WorkerRow(snapshot=live, last_heartbeat=now, gone=False, silent_seconds=0.0)
        return [mine, *(r for r in rows if r.snapshot.worker_id != live.worker_id)]

    def local_id(self) -> str | None:
        live = self.local() if self.local is not None else None
        return live.worker_id if live is not None else None
