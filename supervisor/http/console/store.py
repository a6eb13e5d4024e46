"""The console's reads and audited writes, on the connection pool it was given (never the worker's).

Reads use console.sql; single-job actions run the queue's own named queries
(queue.sql: retry_failed_job, cancel_job) in one transaction with their audit row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from shared.vocabulary import ErrorCategory, ExportType, JobStatus
from supervisor.http.console.chart import Minute, Throughput, last_hour
from supervisor.queue.queries import load, query

PAGE_SIZE = 50
LIVE_ROWS_MAX = 100


class FilterError(ValueError):
    """A jobs filter value is malformed; ``field`` names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    status: JobStatus | None = None
    user_id: UUID | None = None
    export_type: ExportType | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    before_at: datetime | None = None
    before_id: UUID | None = None

    @classmethod
    def parse(cls, params: dict[str, str]) -> JobFilter:
        """From query parameters; empty values mean no filter; errors name the field."""

        def text(name: str) -> str:
            return params.get(name, "").strip()

        status = _enum(JobStatus, text("status"), "status")
        export_type = _enum(ExportType, text("type"), "type")
        user_id = _uuid(text("user"), "user")
        created_from = _when(text("from"), "from")
        created_to = _when(text("to"), "to")
        before_at = before_id = None
        if text("before"):
            at, _, ident = text("before").partition("_")
            before_at, before_id = _when(at, "before"), _uuid(ident, "before")
            if before_at is None or before_id is None:
                raise FilterError("before", "expected TIMESTAMP_UUID (the link under the table makes it)")
        return cls(status=status, user_id=user_id, export_type=export_type, created_from=created_from,
                   created_to=created_to, before_at=before_at, before_id=before_id)

    def query_params(self, **overrides: str) -> dict[str, str]:
        """The filter as query parameters (for links: the next page)."""
        out = {
            "status": self.status or "",
            "user": str(self.user_id or ""),
            "type": self.export_type or "",
            "from": self.created_from.strftime("%Y-%m-%dT%H:%M") if self.created_from else "",
            "to": self.created_to.strftime("%Y-%m-%dT%H:%M") if self.created_to else "",
        }
        out.update(overrides)
        return {k: v for k, v in out.items() if v}


def _enum(kind: Any, value: str, field: str) -> Any:
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise FilterError(field, f"{value!r} is not one of {', '.join(m.value for m in kind)}") from None


def _uuid(value: str, field: str) -> UUID | None:
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise FilterError(field, f"{value!r} is not a UUID") from None


def _when(value: str, field: str) -> datetime | None:
    """An ISO date or date-time; without a zone it is UTC."""
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(field, f"{value!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class TierCounts(msgspec.Struct, frozen=True):
    """Jobs by status (rows) and priority tier (columns)."""

    tiers: list[str]
    rows: list[tuple[str, list[int], int]]  # status, count per tier, total
    totals: list[int]
    total: int


class ActionResult(msgspec.Struct, frozen=True):
    ok: bool
    outcome: str
    affected: int


PoolSource = AsyncConnectionPool[Any] | Callable[[], Awaitable[AsyncConnectionPool[Any]]]


class ConsoleStore:
    def __init__(self, pool: PoolSource, settings: Settings) -> None:
        """`pool`: a pool (opened here on first use if it is not open yet) or an async factory of one."""
        self._source = pool
        self._pool: AsyncConnectionPool[Any] | None = None
        self.settings = settings
        self._open_lock = asyncio.Lock()
        self._counts: tuple[float, TierCounts] | None = None
        self._counts_lock = asyncio.Lock()

    async def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._pool is None:
                if isinstance(self._source, AsyncConnectionPool):
                    await self._source.open(wait=True, timeout=self.settings.database.connect_timeout_seconds * 2)
                    self._pool = self._source
                else:
                    self._pool = await self._source()
            return self._pool

    async def _rows(self, statement: sql.Composable, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        pool = await self.pool()
        async with pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(statement, params or {})
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    # ---- overview ---------------------------------------------------------------

    def tier_name(self, priority: int) -> str:
        limits = self.settings.limits
        if priority == limits.subscriber_priority:
            return "subscriber"
        if priority == limits.free_user_priority:
            return "free"
        return f"priority {priority}"

    async def counts(self, max_age: float = 0.0) -> TierCounts:
        """Jobs by status and tier; with `max_age`, one query serves every caller within that many seconds."""
        now = time.monotonic()
        if self._counts is not None and now - self._counts[0] < max_age:
            return self._counts[1]
        async with self._counts_lock:
            if self._counts is not None and time.monotonic() - self._counts[0] < max_age:
                return self._counts[1]
            rows = await self._rows(load("console.sql")["counts_by_status_priority"])
            self._counts = (time.monotonic(), self._tabulate(rows))
            return self._counts[1]

    def _tabulate(self, rows: list[dict[str, Any]]) -> TierCounts:
        priorities = sorted({int(r["priority"]) for r in rows}, reverse=True)
        tiers: list[str] = []
        for p in priorities:  # two priorities may share a name only if settings changed; merge them
            if self.tier_name(p) not in tiers:
                tiers.append(self.tier_name(p))
        if not tiers:
            tiers = ["subscriber", "free"]
        table: dict[str, list[int]] = {s.value: [0] * len(tiers) for s in JobStatus}
        for r in rows:
            column = tiers.index(self.tier_name(int(r["priority"])))
            table.setdefault(r["status"], [0] * len(tiers))[column] += r["jobs"]
        out_rows = [(status, counts, sum(counts)) for status, counts in table.items()]
        totals = [sum(counts[i] for _, counts, _ in out_rows) for i in range(len(tiers))]
        return TierCounts(tiers=tiers, rows=out_rows, totals=totals, total=sum(totals))

    async def throughput(self) -> Throughput:
        rows = await self._rows(load("console.sql")["finished_per_minute"])
        now_minute = datetime.now(UTC).replace(second=0, microsecond=0)
        return last_hour([Minute(r["minute"], r["completed"], r["failed"]) for r in rows], now_minute)

    async def oldest_pending(self) -> dict[str, Any] | None:
        rows = await self._rows(load("console.sql")["oldest_pending"])
        return rows[0] if rows else None

    # ---- jobs ---------------------------------------------------------------------

    async def jobs_page(self, flt: JobFilter, limit: int | None = None) -> tuple[list[dict[str, Any]], bool]:
        """One page of jobs (newest first) and whether there are older ones."""
        limit = limit or PAGE_SIZE
        pieces = load("console.sql")
        used = [
            ("filter_status", flt.status),
            ("filter_user", flt.user_id),
            ("filter_type", flt.export_type),
            ("filter_created_from", flt.created_from),
            ("filter_created_to", flt.created_to),
            ("filter_before", flt.before_at),
        ]
        filters = [pieces[name] for name, value in used if value is not None] or [pieces["filter_all"]]
        statement = pieces["jobs_page"].format(filters=sql.SQL("\n   AND ").join(filters))
        params = msgspec.to_builtins(flt, builtin_types=(datetime, UUID)) | {"limit": limit + 1}
        rows = await self._rows(statement, params)
        return rows[:limit], len(rows) > limit

    async def job(self, job_id: UUID) -> dict[str, Any] | None:
        rows = await self._rows(query("get_job"), {"id": job_id})
        return rows[0] if rows else None

    async def job_rows(self, ids: list[UUID]) -> list[dict[str, Any]]:
        return await self._rows(load("console.sql")["job_rows"], {"ids": ids[:LIVE_ROWS_MAX]})

    async def failed_by_category(self) -> list[dict[str, Any]]:
        return await self._rows(load("console.sql")["failed_by_category"])

    async def recent_audit(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._rows(load("console.sql")["recent_audit"], {"limit": limit})

    # ---- sign-outs ------------------------------------------------------------------

    async def sign_out(self, nonce: str, operator: str, expires: int) -> None:
        """Revoke a session on every worker until its cookie expires (export_console_signouts)."""
        pool = await self.pool()
        async with pool.connection() as conn:
            await conn.execute(load("console.sql")["sign_out"],
                               {"nonce": nonce, "operator": operator, "expires": expires})

    async def signed_out(self, nonce: str) -> bool:
        return bool(await self._rows(load("console.sql")["signed_out"], {"nonce": nonce}))

    # ---- audited actions ------------------------------------------------------------

    async def retry_job(self, job_id: UUID, actor: str) -> ActionResult:
        async def act(conn: Any) -> ActionResult:
            cur = await conn.execute(query("retry_failed_job"), {"id": job_id})
            if await cur.fetchone() is None:
                return ActionResult(False, "refused: the job is not failed or cancelled", 0)
            return ActionResult(True, "retried: back to pending", 1)

        return await self._audited("retry_job", str(job_id), actor, act)

    async def cancel_job(self, job_id: UUID, actor: str) -> ActionResult:
        async def act(conn: Any) -> ActionResult:
            cur = await conn.execute(query("cancel_job"), {"id": job_id, "user_id": None})
            row = await cur.fetchone()
            if row is None:
                return ActionResult(False, "refused: the job is not pending or processing", 0)
            if row[0] == JobStatus.CANCELLED:
                return ActionResult(True, "cancelled", 1)
            return ActionResult(True, "cancel requested: its worker stops the render", 1)

        return await self._audited("cancel_job", str(job_id), actor, act)

    async def retry_category(self, category: ErrorCategory, actor: str) -> ActionResult:
        async def act(conn: Any) -> ActionResult:
            cur = await conn.execute(load("console.sql")["retry_failed_category"], {"category": category})
            count = len(await cur.fetchall())
            return ActionResult(count > 0, f"retried {count} failed {category} jobs", count)

        return await self._audited("retry_failed_category", str(category), actor, act)

    async def _audited(self, action: str, target: str, actor: str, act: Any) -> ActionResult:
        """The action and its audit row commit together (or neither does)."""
        pool = await self.pool()
        async with pool.connection() as conn, conn.transaction():
            result: ActionResult = await act(conn)
            await conn.execute(
                load("console.sql")["audit"],
                {"actor": actor, "action": action, "target": target, "outcome": result.outcome,
                 "affected": result.affected},
            )
        return result
