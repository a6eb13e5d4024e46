"""Connection pools for the supervisor and the CLI."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings


async def open_pool(
    conninfo: str,
    settings: Settings,
    *,
    max_size: int = 6,
    name: str = "export-worker",
    timeout: float | None = None,
    max_waiting: int = 0,
) -> AsyncConnectionPool[Any]:
    """A small pool with autocommit and a statement timeout on every connection.

    Budget per worker: the worker's pool, the HTTP side's pool (HTTP_DB_POOL_SIZE)
    and one LISTEN connection. `timeout` bounds the wait for a connection;
    `max_waiting` (0 = unbounded) refuses more waiters at once (TooManyRequests).
    """
    timeout_ms = settings.database.statement_timeout_ms
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        kwargs={
            "autocommit": True,
            "connect_timeout": settings.database.connect_timeout_seconds,
            "options": f"-c statement_timeout={timeout_ms}",
            "application_name": name,
        },
        timeout=timeout if timeout is not None else settings.database.connect_timeout_seconds * 2,
        max_waiting=max_waiting,
        open=False,
    )
    await pool.open(wait=True, timeout=settings.database.connect_timeout_seconds * 2)
    return pool
