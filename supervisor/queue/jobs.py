"""The job queue: creation, claiming, fenced writes, retries, rescue, cancellation.

Fencing is built into the types: every write of a claim takes the :class:`Claim`
returned by :meth:`JobQueue.claim` and matches on (id, worker_id, attempts,
status = 'processing'). A write that matches nothing raises :class:`ClaimLost`, so
the caller cannot go on to upload or mail by accident.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shared.config import RetrySettings
from shared.errors import ErrorCategory
from shared.vocabulary import ExportType, JobStatus
from supervisor.queue.group_commit import GroupCommit
from supervisor.queue.queries import query
from supervisor.queue.store import JobStore


class ClaimLost(Exception):
    """This worker no longer holds the claim (rescued, cancelled, or re-claimed)."""

    def __init__(self, claim: Claim, action: str) -> None:
        super().__init__(f"claim on job {claim.job_id} attempt {claim.attempt} lost; {action} did nothing")
        self.claim = claim


@dataclass(frozen=True)
class Queued:
    """Which outboxes a final status wrote a row to."""

    mail: bool
    webhook: bool


@dataclass(frozen=True)
class Completion:
    """One fenced completion waiting for its batch."""

    claim: Claim
    storage_path: str
    file_url: str
    file_size_bytes: int
    content_type: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    worker_id: str
    user_id: str
    export_type: ExportType
    payload: dict[str, Any]
    max_attempts: int
    waited_seconds: float
    claimed_at: float = field(default_factory=time.monotonic)

    def params(self) -> dict[str, Any]:
        return {"id": self.job_id, "worker_id": self.worker_id, "attempts": self.attempt}


@dataclass(frozen=True)
class Outcome:
    """What the retry rule made of a failed attempt: pending again (after retry_in_ms) or failed."""

    status: JobStatus
    retry_in_ms: int = 0
    child_kills: int = 0


def full_jitter_backoff_ms(attempt: int, base_ms: int, cap_ms: int, rng: Callable[[], float]) -> int:
    """AWS's "full jitter": uniform in [0, min(cap, base * 2^(attempt-1))]."""
    ceiling = min(cap_ms, base_ms * (2 ** max(attempt - 1, 0)))
    return int(rng() * ceiling)


class JobQueue(JobStore):
    """The job table as a worker sees it: claims, heartbeats, fenced outcomes, rescue; the store besides."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        worker_id: str,
        retry: RetrySettings,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(pool)
        self.worker_id = worker_id
        self.retry = retry
        self._rng = rng
        # A cancelled statement may have committed: its waiters are cancelled, not told "lost".
        self._completions: GroupCommit[Completion, Queued | None] = GroupCommit(
            self._complete_batch, cancelled=lambda _: None)

    # ---- claiming ------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claim]:
        if limit <= 0:
            return []
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                query("claim_jobs"), {"limit": limit, "worker_id": self.worker_id}
            )
            rows = await cur.fetchall()
        return [
            Claim(
                job_id=str(r["id"]),
                attempt=r["attempts"],
                worker_id=self.worker_id,
                user_id=str(r["user_id"]),
                export_type=ExportType(r["export_type"]),
                payload=r["payload"],
                max_attempts=r["max_attempts"],
                waited_seconds=r["waited_seconds"],
            )
            for r in rows
        ]

    async def next_available_in(self) -> float | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query("next_available_in"))
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def heartbeat(self, claims: Sequence[Claim]) -> dict[str, bool]:
        """Refresh claims; returns {job_id: cancel_requested} for the claims still held."""
        if not claims:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                query("heartbeat"),
                {
                    "ids": [c.job_id for c in claims],
                    "attempts": [c.attempt for c in claims],
                    "worker_id": self.worker_id,
                },
            )
            rows = await cur.fetchall()
        return {str(r[0]): bool(r[1]) for r in rows}

    # ---- fenced outcomes -----------------------------------------------------

    async def complete(
        self,
        claim: Claim,
        *,
        storage_path: str,
        file_url: str,
        file_size_bytes: int,
        content_type: str,
        metadata: dict[str, Any],
    ) -> Queued:
        """Mark completed and queue the completion mail and webhook, atomically; raises ClaimLost.

        Completions that arrive while one is in flight share the next statement
        (group commit); each is still fenced on its own claim.
        """
        queued = await self._completions.submit(
            Completion(claim, storage_path, file_url, file_size_bytes, content_type, metadata))
        if queued is None:
            raise ClaimLost(claim, "complete")
        return queued

    async def _complete_batch(self, batch: Sequence[Completion]) -> list[Queued | None]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                query("complete_jobs"),
                {
                    "ids": [c.claim.job_id for c in batch],
                    "attempts": [c.claim.attempt for c in batch],
                    "storage_paths": [c.storage_path for c in batch],
                    "file_urls": [c.file_url for c in batch],
                    "sizes": [c.file_size_bytes for c in batch],
                    "content_types": [c.content_type for c in batch],
                    "metadata": [Jsonb(c.metadata) for c in batch],
                    "worker_id": self.worker_id,
                },
            )
            completed = {str(row[0]): Queued(mail=row[1], webhook=row[2]) for row in await cur.fetchall()}
        return [completed.get(c.claim.job_id) for c in batch]

    async def fail(
        self,
        claim: Claim,
        category: ErrorCategory,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        child_killed: bool = False,
        retry_delay_ms: int | None = None,
    ) -> Outcome:
        """Record a failed attempt; the database's one retry rule decides retry or final.

        `child_killed`: the render was killed for time or memory (counts toward
        POISON_KILL_LIMIT and sends the job behind newer work).
        """
        delay = (
            retry_delay_ms
            if retry_delay_ms is not None
            else full_jitter_backoff_ms(
                claim.attempt, self.retry.retry_backoff_base_ms, self.retry.retry_backoff_cap_ms, self._rng
            )
        )
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                query("settle_failure"),
                claim.params()
                | {"delay_ms": delay, "message": message, "category": str(category),
                   "metadata": Jsonb(metadata or {}), "child_killed": child_killed},
            )
            row = await cur.fetchone()
        if row is None:
            raise ClaimLost(claim, "fail")
        status = JobStatus(row[1])
        return Outcome(status, int(row[3]) if status is JobStatus.PENDING else 0, child_kills=int(row[2]))

    async def defer(self, claim: Claim, delay_ms: int, message: str) -> int:
        """Back to pending without spending the attempt; returns the deferral count."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                query("defer_job"), claim.params() | {"delay_ms": delay_ms, "message": message}
            )
            row = await cur.fetchone()
        if row is None:
            raise ClaimLost(claim, "defer")
        return int(row[0])

    async def release(self, claim: Claim) -> None:
        """Hand a job back to pending without spending its attempt (graceful shutdown)."""
        await self._fenced("release_job", claim, "release")

    async def settle_cancelled(self, claim: Claim) -> None:
        await self._fenced("cancel_claimed_job", claim, "cancel")

    async def _fenced(self, name: str, claim: Claim, action: str) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query(name), claim.params())
            if await cur.fetchone() is None:
                raise ClaimLost(claim, action)

    # ---- upkeep --------------------------------------------------------------

    async def rescue_stale(self, stale_seconds: float) -> list[tuple[str, str]]:
        """Return stale claims to pending (or failed); safe on every worker at once."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                query("rescue_stale"), {"stale_seconds": stale_seconds, "rescuer": self.worker_id}
            )
            rows = await cur.fetchall()
        return [(str(r[0]), r[1]) for r in rows]
