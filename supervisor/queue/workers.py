"""The workers table: each worker says, every heartbeat, what it is and whether it claims.

:class:`supervisor.worker_state.WorkerState` reads a running worker's parts into
a :class:`WorkerSnapshot`; :meth:`WorkerRegistry.beat` upserts it as the
worker's row in ``export_workers`` and forgets rows gone longer than the bound.
The console reads the rows (:func:`list_workers`) for every other worker and
the snapshot itself, live, for the worker it runs in.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from datetime import UTC, datetime
from enum import StrEnum
from importlib import metadata
from typing import Any

import msgspec
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from supervisor.queue.queries import load

log = logging.getLogger(__name__)

RECENT_KILLS = 20  # kill events kept per worker for the console


class NotClaiming(StrEnum):
    """Why a worker claims nothing right now."""

    STARTING = "starting"  # its render pool is not up yet
    BRAKE = "brake"  # render children keep failing to boot (restart-storm brake)
    HIGH_WATER = "high_water"  # container memory above CONTAINER_HIGH_WATER_PERCENT
    CANARY = "canary"  # the last canary render failed
    DATABASE = "database"  # the database is unreachable
    SHUTTING_DOWN = "shutting_down"  # SIGTERM received: finishing in-flight jobs


class ChildInfo(msgspec.Struct, frozen=True):
    name: str
    pid: int
    state: str
    renders: int
    age_seconds: float
    memory_bytes: int
    job_id: str | None = None


class KillEvent(msgspec.Struct, frozen=True):
    at: datetime
    reason: str
    count: int


class WorkerDetail(msgspec.Struct, frozen=True):
    """The row's ``detail`` column."""

    children: list[ChildInfo] = []
    kills: dict[str, int] = {}
    recent_kills: list[KillEvent] = []


class WorkerSnapshot(msgspec.Struct, frozen=True):
    worker_id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    children_ready: int
    children_busy: int
    capacity: int
    children_memory_bytes: int
    container_memory_bytes: int | None
    container_limit_bytes: int | None
    claiming: bool
    not_claiming: NotClaiming | None
    canary_ok: bool | None
    breaker_state: str | None
    detail: WorkerDetail


class WorkerRow(msgspec.Struct, frozen=True):
    """A row of the workers table as the console reads it."""

    snapshot: WorkerSnapshot
    last_heartbeat: datetime
    gone: bool
    silent_seconds: float


class KillLog:
    """Kill counts turned into dated events, by comparing each reading with the last."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self.recent: deque[KillEvent] = deque(maxlen=RECENT_KILLS)

    def observe(self, counts: dict[str, int]) -> list[KillEvent]:
        now = datetime.now(UTC)
        for reason, count in sorted(counts.items()):
            new = count - self._seen.get(reason, 0)
            if new > 0:
                self.recent.appendleft(KillEvent(now, reason, new))
        self._seen = dict(counts)
        return list(self.recent)


def package_version() -> str:
    try:
        return metadata.version("export-worker")
    except metadata.PackageNotFoundError:
        return "unknown"


class WorkerRegistry:
    """One worker's own row: upserted by :meth:`beat`, on the worker's pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], worker_id: str, *, forget_hours: int) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.forget_hours = forget_hours
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.version = package_version()
        self.started_at = datetime.now(UTC)
        self.kill_log = KillLog()
        self.registered = False  # this process's row is written: it may claim (migration 0010)

    async def beat(self, snapshot: WorkerSnapshot) -> bool:
        """Upsert this worker's row and forget long-gone workers; False (logged) when the database is away."""
        queries = load("workers.sql")
        params = msgspec.to_builtins(snapshot, builtin_types=(datetime,))
        params["detail"] = Jsonb(msgspec.to_builtins(snapshot.detail))  # dates as ISO text inside jsonb
        try:
            async with self.pool.connection() as conn:
                await conn.execute(queries["upsert_worker"], params)
                cur = await conn.execute(queries["forget_gone_workers"], {"forget_hours": self.forget_hours})
                forgotten = [r[0] for r in await cur.fetchall()]
        except Exception as exc:
            # Before the first row nothing is claimed, so say why; later a miss is routine.
            (log.debug if self.registered else log.warning)("workers table not updated", extra={"error": str(exc)})
            return False
        self.registered = True
        if forgotten:
            log.info("gone workers forgotten", extra={"workers": forgotten})
        return True


async def list_workers(pool: AsyncConnectionPool[Any], gone_seconds: int) -> list[WorkerRow]:
    """Every row of the workers table, live workers first."""
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            load("workers.sql")["list_workers"], {"gone_seconds": gone_seconds}
        )
        rows = await cur.fetchall()
    out = []
    for row in rows:
        gone, silent, last = row.pop("gone"), row.pop("silent_seconds"), row.pop("last_heartbeat")
        snapshot = msgspec.convert(row, WorkerSnapshot, strict=False)
        out.append(WorkerRow(snapshot=snapshot, last_heartbeat=last, gone=bool(gone), silent_seconds=float(silent)))
    return out
