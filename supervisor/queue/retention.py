"""Retention: delete old jobs with their files (files first), one worker at a time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from shared.config import RetentionSettings
from supervisor.queue.queries import query

log = logging.getLogger(__name__)

RETENTION_LOCK_KEY = 7_312_002
BATCH = 500
# An upload entry older than this belongs to a claim that lost or died: no claim
# lives this long (JOB_TIMEOUT_SECONDS <= 120, STALE_AFTER_SECONDS <= 3600).
ORPHAN_AFTER_SECONDS = 2 * 3600


@dataclass
class RetentionResult:
    jobs_deleted: int = 0
    files_deleted: int = 0
    orphans_deleted: int = 0
    skipped: bool = False  # another worker holds the retention lock


async def run_retention(
    pool: AsyncConnectionPool[Any],
    storage: Any,
    settings: RetentionSettings,
    *,
    orphan_after_seconds: float = ORPHAN_AFTER_SECONDS,
) -> RetentionResult:
    """Delete expired files, then expired jobs with theirs; a file is removed before its row.

    If a storage delete fails, the rows stay and the next run tries again: a row
    never disappears while its file remains. Last, objects that no completion took
    (their claim lost or died) are deleted with their upload entries.
    """
    result = RetentionResult()
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK_KEY,))
        row = await cur.fetchone()
        if not row or not row[0]:
            result.skipped = True
            return result
        await _delete_expired_files(conn, storage, settings, result)
        await _delete_expired_jobs(conn, storage, settings, result)
        await _delete_orphan_uploads(conn, storage, orphan_after_seconds, result)
    if result.jobs_deleted or result.files_deleted or result.orphans_deleted:
        log.info("retention done", extra={"jobs_deleted": result.jobs_deleted, "files_deleted": result.files_deleted,
                                          "orphans_deleted": result.orphans_deleted})
    return result


async def _batches(conn: AsyncConnection[Any], name: str, params: dict[str, Any]) -> AsyncIterator[list[Any]]:
    """Run the named query again until it returns no rows (each batch is dealt with before the next)."""
    while True:
        cur = await conn.execute(query(name), params | {"limit": BATCH})
        rows = await cur.fetchall()
        if not rows:
            return
        yield rows


async def _delete_expired_files(
    conn: AsyncConnection[Any], storage: Any, settings: RetentionSettings, result: RetentionResult
) -> None:
    async for rows in _batches(conn, "expired_files", {"files_days": settings.retention_files_days}):
        await asyncio.to_thread(storage.delete, [r[1] for r in rows])
        await conn.execute(query("mark_files_deleted"), {"ids": [r[0] for r in rows]})
        result.files_deleted += len(rows)


async def _delete_expired_jobs(
    conn: AsyncConnection[Any], storage: Any, settings: RetentionSettings, result: RetentionResult
) -> None:
    days = {"completed_days": settings.retention_completed_days, "failed_days": settings.retention_failed_days}
    async for rows in _batches(conn, "expired_jobs", days):
        paths = [r[1] for r in rows if r[1]]
        if paths:
            await asyncio.to_thread(storage.delete, paths)
            result.files_deleted += len(paths)
        await conn.execute(query("delete_jobs"), {"ids": [r[0] for r in rows]})
        result.jobs_deleted += len(rows)


async def _delete_orphan_uploads(
    conn: AsyncConnection[Any], storage: Any, older_than_seconds: float, result: RetentionResult
) -> None:
    """Objects no completion took (their claim was lost or died), with their upload entries."""
    async for rows in _batches(conn, "orphan_uploads", {"older_than_seconds": older_than_seconds}):
        keys = [r[0] for r in rows]
        await asyncio.to_thread(storage.delete, keys)
        await conn.execute(query("forget_uploads"), {"keys": keys})
        result.orphans_deleted += len(keys)
