"""The mail sender: drains export_mail_outbox with leases, retries and backoff.

Rows are written in the same transaction as the status change (supervisor/queue.py),
unique per job and kind, so each job mails exactly once whatever crashes. A send
that fails is retried later; mail never blocks or fails a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from shared.vocabulary import FINAL_STATUSES
from supervisor.links import download_link
from supervisor.queries import query

log = logging.getLogger(__name__)


async def drain_forever(
    drain_once: Callable[[], Awaitable[int]], wake: asyncio.Event, idle_seconds: float, what: str
) -> None:
    """An outbox's loop: drain while there is work; when idle, sleep until woken or `idle_seconds`."""
    while True:
        try:
            sent = await drain_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is away; try again later
            log.warning(f"{what} unavailable", extra={"error": str(exc)})
            sent = 0
        if sent == 0:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), idle_seconds)


class OutboxSender:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        worker_id: str,
        settings: Settings,
        mail: Any,
        storage: Any,
        metrics: Any = None,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.settings = settings
        self.mail = mail
        self.storage = storage
        self.metrics = metrics
        self.wake = asyncio.Event()

    async def run(self, idle_seconds: float = 5.0) -> None:
        await drain_forever(self.drain_once, self.wake, idle_seconds, "mail outbox")

    async def drain_once(self, limit: int = 20) -> int:
        """Send what is due; returns how many rows were handled."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                query("claim_mail"),
                {"limit": limit, "worker_id": self.worker_id, "lease_seconds": self.settings.mail.mail_lease_seconds},
            )
            rows = await cur.fetchall()
        for row in rows:
            await self._send_one(row)
        return len(rows)

    async def _send_one(self, row: dict[str, Any]) -> None:
        from supervisor.mail import MailError, compose_completed, compose_failed, document_name, explain_failure

        if row["job_status"] is None:
            return  # deleted by retention meanwhile; the row went with it (cascade)
        job_id = str(row["job_id"])
        if row["job_status"] != row["kind"]:
            # A failed job retried by an operator since: wait while it runs again; once it
            # ends otherwise, this mail is no longer true.
            final = row["job_status"] in FINAL_STATUSES
            await self._failed(row, f"not sent: the job is now {row['job_status']}", give_up=final)
            return
        try:
            if row["kind"] == "completed":
                ttl = self.settings.storage.signed_url_ttl_seconds
                url = await asyncio.to_thread(download_link, self.storage, row["storage_path"], ttl)
                expires = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat(timespec="seconds")
                mail = compose_completed(job_id, row["export_type"], url, expires, to=row["recipient"],
                                         document=document_name(row["payload"]))
            else:
                reason = (row.get("metadata") or {}).get("failure_reason")
                words, step = explain_failure(row["error_category"] or "permanent", reason,
                                              row["error_message"] or "")
                mail = compose_failed(job_id, row["export_type"], words, to=row["recipient"],
                                      document=document_name(row["payload"]), next_step=step)
            await asyncio.to_thread(self.mail.send, mail)
        except MailError as exc:
            await self._failed(row, str(exc), give_up=not exc.transient)
            return
        except Exception as exc:  # storage link or anything else: retry later
            await self._failed(row, f"{type(exc).__name__}: {exc}", give_up=False)
            return
        async with self.pool.connection() as conn:
            await conn.execute(query("mail_sent"), {"id": row["id"], "worker_id": self.worker_id})
        if self.metrics is not None:
            self.metrics.mails_sent.labels(row["kind"]).inc()
        log.info("mail sent", extra={"job_id": job_id, "kind": row["kind"]})

    async def _failed(self, row: dict[str, Any], error: str, *, give_up: bool) -> None:
        attempts = int(row["attempts"])
        give_up = give_up or attempts >= self.settings.mail.mail_max_attempts
        delay = min(3600, 5 * 2 ** (attempts - 1))
        if self.metrics is not None:
            self.metrics.mail_errors.labels(row["kind"]).inc()
        log.warning(
            "mail gave up" if give_up else "mail send failed; will retry",
            extra={"job_id": str(row["job_id"]), "kind": row["kind"], "error": error, "retry_in_s": delay},
        )
        async with self.pool.connection() as conn:
            await conn.execute(
                query("mail_failed"),
                {"id": row["id"], "worker_id": self.worker_id, "error": error,
                 "delay_seconds": delay, "give_up": give_up},
            )
