"""The pre-upload fence and the upload journal (``export_uploads``).

Before a claim uploads, one statement refreshes its heartbeat and, if the claim
still holds and was not cancelled, records the object key it is about to write.
The fenced completion closes the winner's entry (queue.sql, complete_jobs); what
stays belongs to claims that lost or died, for retention's orphan sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from supervisor.queue.group_commit import GroupCommit
from supervisor.queue.jobs import Claim, ClaimLost, JobQueue
from supervisor.queue.queries import query


class UploadJournal:
    def __init__(self, pool: AsyncConnectionPool[Any], worker_id: str) -> None:
        self.pool = pool
        self.worker_id = worker_id

    async def fence(self, uploads: Sequence[tuple[Claim, str]]) -> dict[str, bool]:
        """Refresh claims and record the key each will write.

        Returns {job_id: cancel_requested} for the claims still held; only those
        (and only when not cancelled) may upload.
        """
        if not uploads:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                query("fence_uploads"),
                {
                    "ids": [c.job_id for c, _ in uploads],
                    "attempts": [c.attempt for c, _ in uploads],
                    "keys": [key for _, key in uploads],
                    "worker_id": self.worker_id,
                },
            )
            rows = await cur.fetchall()
        return {str(r[0]): bool(r[1]) for r in rows}

    async def forget(self, claim: Claim, storage_key: str) -> None:
        """A lost claim removed its own object; drop its upload entry too."""
        async with self.pool.connection() as conn:
            await conn.execute(query("forget_upload"), {"storage_key": storage_key, "id": claim.job_id})


class FenceCheck:
    """The pre-upload fence check, with group commit.

    Before uploading, a delivery must see a heartbeat, sent after its render
    ended, that still holds its claim. Deliveries that arrive while one such
    heartbeat is in flight share the next one: one round trip for all of them,
    each still checked before its own upload.
    """

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.journal = UploadJournal(queue.pool, queue.worker_id)
        self._batches: GroupCommit[tuple[Claim, str], bool | None] = GroupCommit(
            self._fence, cancelled=lambda item: ClaimLost(item[0], "upload (fence check cancelled)"))

    async def check(self, claim: Claim, storage_key: str) -> bool:
        """True when a cancel was requested; raises ClaimLost when the claim is gone.

        When it returns False the claim still holds and `storage_key` is recorded
        as this claim's upload (see fence_uploads).
        """
        state = await self._batches.submit((claim, storage_key))
        if state is None:
            raise ClaimLost(claim, "upload")
        return state

    async def _fence(self, uploads: Sequence[tuple[Claim, str]]) -> list[bool | None]:
        held = await self.journal.fence(uploads)
        return [held.get(claim.job_id) for claim, _ in uploads]
