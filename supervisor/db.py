"""Connection pools for the supervisor and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings

log = logging.getLogger(__name__)


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


async def revive_pool(pool: AsyncConnectionPool[Any], conninfo: str, connect_timeout: int) -> None:
    """Return once `pool` can hand out a connection again, pushing it to reconnect at once.

    psycopg_pool retries each lost connection with exponential backoff (1, 2, 4 ... s,
    for up to 5 minutes): after an outage of a minute the pool could stay empty for
    half a minute once the database is back. Once a second, try one connection of our
    own; when it works and the pool still has none to give, add a connection attempt
    now (a resize by one and back: the pool may hold one over its size until it shrinks).
    """
    import psycopg

    while True:
        await asyncio.sleep(1.0)
        try:
            probe = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=connect_timeout)
        except Exception as exc:
            log.debug("database still unreachable: %s", exc)
            continue
        await probe.close()
        with contextlib.suppress(Exception):
            async with pool.connection(timeout=0.5) as conn:
                await conn.execute("SELECT 1")
            return  # recovered on its own
        await pool.resize(pool.min_size + 1, pool.max_size + 1)
        await pool.resize(pool.min_size - 1, pool.max_size - 1)
        log.info("database reachable again; pool %s reconnecting now", pool.name)
        return
