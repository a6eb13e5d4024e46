"""What ``/metrics`` reads from the database at scrape time (queries/metrics.sql)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from supervisor.queue.queries import load


async def read_jobs_created(pool: AsyncConnectionPool[Any]) -> dict[str, int]:
    """Every job ever created, by export type, from migration 0005's counter table."""
    async with pool.connection() as conn:
        cur = await conn.execute(load("metrics.sql")["jobs_created"])
        return {str(export_type): int(created) for export_type, created in await cur.fetchall()}
