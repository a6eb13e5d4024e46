"""The HTTP side's own database pool, and getting it back quickly after an outage.

The API, event streams, /health and /metrics use this pool only, so callers can
exhaust it but never the worker's. When a check or a request finds it broken, a
background task pushes it to reconnect as soon as the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
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
        # Whether the worker's own database work succeeds (its claims, heartbeats and stats).
        self.worker_database_ok: Callable[[], bool] | None = None

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
        if self.busy() and self.worker_database_ok is not None:
            # Callers hold every API connection: that is no reason for the platform to
            # restart a worker whose own database work goes on (issue: hostile callers).
            if self.worker_database_ok():
                return HealthCheck(True, "Database connection OK (the API's connections are all busy)",
                                   {"api_pool": "busy"})
            return HealthCheck(False, "Database unavailable to the worker (the API's connections are all busy)")
        check = await database_check(self.pool)
        if not check.healthy:
            self.failed()
        return check

    def busy(self) -> bool:
        """Every connection of the API pool is in use, or requests already wait for one."""
        stats = self.pool.get_stats()
        in_use_all = stats.get("pool_size", 0) >= self.pool.max_size and stats.get("pool_available", 0) == 0
        return in_use_all or stats.get("requests_waiting", 0) > 0

    async def close(self) -> None:
        if self._reviving is not None:
            self._reviving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reviving
        await self.pool.close()
