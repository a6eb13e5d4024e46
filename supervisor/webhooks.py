"""The webhook sender: drains export_webhook_outbox with leases, signs, delivers, retries.

Rows are written in the same statement as a job's completion or final failure
(supervisor/queries/queue.sql), one per job and event, each with its own
``webhook_id`` made once, so every retry carries the same ``webhook-id``. Any
worker sends them; a delivery runs in its own loop, so a slow receiver holds up
neither rendering nor mail.

Outcomes: 2xx delivered; 410 Gone disabled; anything else (other statuses,
timeouts, refused connections, DNS failures) retried with exponential backoff
and jitter until WEBHOOK_RETRY_PERIOD_SECONDS after the event, then given up. A
target that now resolves to a refused address is given up at once.

At-least-once edge: a worker that dies after the receiver's 2xx and before its
write leaves the lease to expire; the next sender delivers again with the same
``webhook-id`` (the receiver de-duplicates on it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import httpx
import msgspec
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from standardwebhooks.webhooks import Webhook

from shared.config import Settings
from shared.vocabulary import (
    ErrorCategory,
    ExportType,
    JobStatus,
    OutputFormat,
    WebhookEvent,
    WebhookOutcome,
    WebhookStatus,
)
from supervisor.links import download_link
from supervisor.metrics import Metrics
from supervisor.outbox import drain_forever
from supervisor.queries import query
from supervisor.testhooks import pause_point
from supervisor.webhook_targets import Target, TargetRefused, TargetUnreachable, resolve_target

log = logging.getLogger(__name__)

USER_AGENT = "export-worker-webhooks/1"
RETRY = WebhookOutcome.RETRY  # the metric's outcome for an attempt that will be tried again (the row stays pending)
EXPECTED_STATUS = {WebhookEvent.COMPLETED: JobStatus.COMPLETED, WebhookEvent.FAILED: JobStatus.FAILED}


class WebhookData(msgspec.Struct, kw_only=True):
    """The job the event is about."""

    id: UUID
    status: JobStatus
    export_type: ExportType
    format: Annotated[OutputFormat | None, msgspec.Meta(description="The file's format; null for failures.")]
    size_bytes: int | None
    file_url: Annotated[str | None, msgspec.Meta(description="A signed download link; null for failures.")]
    file_url_expires_at: datetime | None
    error_category: ErrorCategory | None
    error_message: str | None


class WebhookBody(msgspec.Struct, kw_only=True):
    """The JSON body of every webhook (Standard Webhooks: type, timestamp, data)."""

    type: WebhookEvent
    timestamp: Annotated[datetime, msgspec.Meta(description="When the event happened (stable across retries).")]
    data: WebhookData


class Refused(Exception):
    """Not sendable: retry later (``give_up`` False) or never."""

    def __init__(self, error: str, *, give_up: bool) -> None:
        super().__init__(error)
        self.error = error
        self.give_up = give_up


class WebhookSender:
    def __init__(
        self, pool: AsyncConnectionPool[Any], worker_id: str, settings: Settings, storage: Any, metrics: Metrics
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.settings = settings
        self.hooks = settings.webhooks
        self.storage = storage
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.signer = Webhook(self.hooks.webhook_secret) if self.hooks.webhook_secret else None

    async def run(self, idle_seconds: float = 1.0) -> None:
        await drain_forever(self.drain_once, self.wake, idle_seconds, "webhook outbox")

    async def drain_once(self, limit: int = 20) -> int:
        """Deliver what is due, concurrently; returns how many rows were handled."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                query("claim_webhooks"),
                {"limit": limit, "worker_id": self.worker_id, "lease_seconds": self.hooks.webhook_lease_seconds},
            )
            rows = await cur.fetchall()
        await asyncio.gather(*(self._deliver(row) for row in rows))
        return len(rows)

    async def _deliver(self, row: dict[str, Any]) -> None:
        event = WebhookEvent(row["event"])
        try:
            body = await self._body(row, event)
            target = await self._target(row["url"])
            status, error = await self._post(target, row["webhook_id"], body)
        except Refused as exc:
            await self._retry_or_give_up(row, event, None, exc.error, give_up=exc.give_up)
            return
        except Exception as exc:  # storage link or anything else: retry later
            await self._retry_or_give_up(row, event, None, f"{type(exc).__name__}: {exc}", give_up=False)
            return
        if 200 <= status < 300:
            # Tests stop a worker here (after the 2xx, before the write): the at-least-once edge.
            await asyncio.to_thread(pause_point, "webhook-delivered", row["webhook_id"])
            await self._write("webhook_delivered", row, status=status)
            self.metrics.webhook_deliveries.labels(event, WebhookStatus.DELIVERED).inc()
            log.info("webhook delivered", extra=self._log_fields(row, status))
        elif status == 410:
            await self._write("webhook_disabled", row, status=status, error="410 Gone: the receiver disabled it")
            self.metrics.webhook_deliveries.labels(event, WebhookStatus.DISABLED).inc()
            log.warning("webhook disabled by the receiver (410 Gone)", extra=self._log_fields(row, status))
        else:  # status 0: no answer at all
            await self._retry_or_give_up(row, event, status or None, error, give_up=False)

    async def _body(self, row: dict[str, Any], event: WebhookEvent) -> bytes:
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query("get_job"), {"id": row["job_id"]})
            job = await cur.fetchone()
        if job is None:
            raise Refused("the job was deleted", give_up=True)
        if job["status"] != EXPECTED_STATUS[event]:
            # An operator retried the job since: wait while it runs again; once it ends otherwise, the event is stale.
            final = job["status"] in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
            raise Refused(f"not sent: the job is now {job['status']}", give_up=final)
        file_url = expires = fmt = None
        if event is WebhookEvent.COMPLETED:
            ttl = self.settings.storage.signed_url_ttl_seconds
            file_url = await asyncio.to_thread(download_link, self.storage, job["storage_path"], ttl)
            expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ttl)
            fmt = OutputFormat.from_content_type(job["content_type"])
        data = WebhookData(
            id=UUID(str(job["id"])), status=JobStatus(job["status"]), export_type=ExportType(job["export_type"]),
            format=fmt, size_bytes=job.get("file_size_bytes"), file_url=file_url, file_url_expires_at=expires,
            error_category=ErrorCategory(job["error_category"]) if job.get("error_category") else None,
            error_message=job.get("error_message") if event is WebhookEvent.FAILED else None,
        )
        occurred = job["completed_at"] or row["created_at"]
        return msgspec.json.encode(WebhookBody(type=event, timestamp=occurred.astimezone(UTC), data=data))

    async def _target(self, url: str) -> Target:
        try:
            return await asyncio.to_thread(resolve_target, url, self.settings)
        except TargetRefused as exc:
            raise Refused(f"target refused: {exc.reason}", give_up=True) from None
        except TargetUnreachable as exc:
            raise Refused(str(exc), give_up=False) from None

    async def _post(self, target: Target, webhook_id: str, body: bytes) -> tuple[int, str]:
        """POST to a checked address of the target; (status, what went wrong or '')."""
        if self.signer is None:
            raise Refused("WEBHOOK_SECRET is not set on this worker", give_up=False)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(webhook_id, now, body.decode()),
            "host": target.url.netloc.decode("ascii"),
        }
        hooks = self.hooks
        timeout = httpx.Timeout(hooks.webhook_timeout_seconds, connect=hooks.webhook_connect_timeout_seconds)
        last = "no address to connect to"
        # A client per delivery: a pooled connection made for one name is never reused for another.
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as client:
            for ip in target.ips[:2]:
                request = client.build_request(
                    "POST", target.url.copy_with(host=ip.split("%")[0]), headers=headers, content=body,
                    extensions={"sni_hostname": target.host},
                )
                try:
                    async with asyncio.timeout(hooks.webhook_timeout_seconds):
                        return await self._send(client, request)
                except TimeoutError:
                    return 0, f"no answer within WEBHOOK_TIMEOUT_SECONDS ({hooks.webhook_timeout_seconds:g} s)"
                except httpx.TimeoutException as exc:
                    return 0, f"timed out: {type(exc).__name__}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
        return 0, last

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> tuple[int, str]:
        response = await client.send(request, stream=True)
        try:
            cap, read = self.hooks.webhook_max_response_bytes, bytearray()
            async for chunk in response.aiter_raw():
                read += chunk[: cap - len(read)]
                if len(read) >= cap:
                    break  # the rest is never read
        finally:
            await response.aclose()
        if 300 <= response.status_code < 400:
            return response.status_code, f"HTTP {response.status_code}: redirects are not followed"
        excerpt = bytes(read[:200]).decode("utf-8", "replace").strip()
        return response.status_code, f"HTTP {response.status_code}" + (f": {excerpt}" if excerpt else "")

    async def _retry_or_give_up(
        self, row: dict[str, Any], event: WebhookEvent, status: int | None, error: str, *, give_up: bool
    ) -> None:
        hooks = self.hooks
        left = hooks.webhook_retry_period_seconds - float(row["age_seconds"])
        give_up = give_up or left <= 0
        delay = min(hooks.webhook_backoff_cap_seconds, hooks.webhook_backoff_base_seconds * 2 ** (row["attempts"] - 1))
        delay = min(delay / 2 + random.uniform(0, delay / 2), max(left, 0))  # equal jitter; a last try at the end
        outcome = WebhookStatus.FAILED if give_up else RETRY
        self.metrics.webhook_deliveries.labels(event, outcome).inc()
        log.warning("webhook gave up" if give_up else "webhook not delivered; will retry",
                    extra=self._log_fields(row, status) | {"error": error, "retry_in_s": round(delay, 2)})
        await self._write("webhook_failed", row, status=status, error=error, delay_seconds=delay, give_up=give_up)

    async def _write(self, name: str, row: dict[str, Any], **params: Any) -> None:
        fence = {"id": row["id"], "worker_id": self.worker_id, "attempts": row["attempts"]}
        async with self.pool.connection() as conn:
            await conn.execute(query(name), fence | params)

    def _log_fields(self, row: dict[str, Any], status: int | None) -> dict[str, Any]:
        return {"job_id": str(row["job_id"]), "event": row["event"], "webhook_id": row["webhook_id"],
                "attempt": row["attempts"], "status_code": status}
