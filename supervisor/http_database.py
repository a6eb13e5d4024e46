"""The HTTP side's own database pool, and getting it back quickly after an outage.

The API, event streams, /health and /metrics use this pool only, so callers can
exhaust it but never the worker's. When a check or a request finds it broken, a
background task pushes it to reconnect as soon as the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from supervisor.database import open_pool, revive_pool
from supervisor.health import HealthCheck, database_check


class HttpDatabase:
    def __init__(self, pool: AsyncConnectionPool[Any], conninfo: str, connect_timeout: int) -> None:
        self.pool = pool
        self.conninfo = conninfo
        self.connect_timeout = connect_timeout
        self._reviving: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, conninfo: str, settings: Settings, worker_id: str) -> HttpDatabase:
        http = settings.http
        pool = await open_pool(
            conninfo,
            settings,
            max_size=http.http_db_pool_size,
            name=f"export-worker-api {worker_id}",
            timeout=http.http_db_wait_seconds,
            max_waiting=http.http_db_pool_size * 32,  # past this many waiting requests: 503 at once
        )
        return cls(pool, conninfo, settings.database.connect_timeout_seconds)

    def failed(self) -> None:
        """A query could not get a working connection: make sure the pool is being revived."""
        if self._reviving is None or self._reviving.done():
            self._reviving = asyncio.create_task(
                revive_pool(self.pool, self.conninfo, self.connect_timeout), name="http-pool-revive"
            )

    async def health(self) -> HealthCheck:
        check = await database_check(self.pool)
        if not check.healthy:
            self.failed()
        return check

    async def close(self) -> None:
        if self._reviving is not None:
            self._reviving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reviving
        await self.pool.close()
