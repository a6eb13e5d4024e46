"""The job table as the API, the CLI and the console see it: create, read, list, cancel, retry.

No claims here: a worker's side (claiming, heartbeats, fenced outcomes) is
:class:`supervisor.queue.jobs.JobQueue`, which is a store as well.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from supervisor.queue.queries import query


class LimitExceeded(Exception):
    """The creation function refused: a per-user limit is reached (SQLSTATE EW429)."""

    def __init__(self, message: str, limit: str, maximum: int, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit
        self.maximum = maximum
        self.retry_after_seconds = retry_after_seconds


class InvalidJob(Exception):
    """The creation function refused the arguments (SQLSTATE EW422)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class JobStore:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def create_job(
        self,
        *,
        user_id: str,
        export_type: str,
        payload: dict[str, Any],
        menu_id: str | None = None,
        subscriber: bool = False,
        idempotency_key: str | None = None,
        recipient: str | None = None,
        webhook_url: str | None = None,
    ) -> dict[str, Any]:
        """Call create_export_job; raises LimitExceeded or InvalidJob on refusal.

        `recipient` is the mail address (the API's and the CLI's `email`); the row keeps
        it in `notify_email`, the column web apps insert into, and the outbox resolves
        the final recipient from it (export_job_recipient).
        """
        params = {
            "user_id": _uuid(user_id, "user_id"),
            "export_type": export_type,
            "payload": Jsonb(payload),
            "menu_id": _uuid(menu_id, "menu_id") if menu_id else None,
            "subscriber": subscriber,
            "idempotency_key": idempotency_key,
            "recipient": recipient,
            "webhook_url": webhook_url,
        }
        async with self.pool.connection() as conn:
            try:
                cur = await conn.cursor(row_factory=dict_row).execute(query("create_job"), params)
            except psycopg.Error as exc:
                raise _creation_error(exc) from None
            row = await cur.fetchone()
        assert row is not None
        return dict(row)

    # ---- reading and operator actions ---------------------------------------------

    async def cancel(self, job_id: str, user_id: str | None = None) -> str | None:
        """Cancel a pending job now, or request cancellation of a processing one.

        Returns 'cancelled', 'processing' (cancel requested), or None when the job
        does not exist (for this user) or is already final.
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                query("cancel_job"),
                {"id": _uuid(job_id, "job_id"), "user_id": _uuid(user_id, "user_id") if user_id else None},
            )
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def retry_failed(self, job_id: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query("retry_failed_job"), {"id": _uuid(job_id, "job_id")})
            return await cur.fetchone() is not None

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                query("get_job"), {"id": _uuid(job_id, "job_id")}
            )
            row = await cur.fetchone()
        return None if row is None else dict(row)

    async def list_jobs(
        self, *, status: str | None = None, user_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                query("list_jobs"),
                {"status": status, "user_id": _uuid(user_id, "user_id") if user_id else None, "limit": limit},
            )
            return [dict(r) for r in await cur.fetchall()]

    async def stats(self) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query("queue_stats"))
            row = await cur.fetchone()
        return row or {"pending": 0, "processing": 0, "oldest_pending_seconds": 0.0}


def _uuid(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return str(UUID(str(value)))
    except ValueError:
        raise InvalidJob(f"{name} is not a UUID: {value!r}", name) from None


def _creation_error(exc: psycopg.Error) -> Exception:
    diag = exc.diag
    if diag.sqlstate == "EW429":
        detail = json.loads(diag.message_detail or "{}")
        return LimitExceeded(
            diag.message_primary or str(exc),
            detail.get("limit", "limit"),
            int(detail.get("max", 0)),
            int(detail.get("retry_after_seconds", 60)),
        )
    if diag.sqlstate in ("22P05", "22021"):
        # e.g. a NUL (\u0000) in a string: jsonb and text cannot hold it.
        return InvalidJob(f"payload contains a character PostgreSQL cannot store: {diag.message_primary}", "payload")
    if diag.sqlstate == "EW422":
        detail = json.loads(diag.message_detail or "{}")
        return InvalidJob(diag.message_primary or str(exc), detail.get("field", ""))
    return exc
