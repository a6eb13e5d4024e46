"""The webhook sender, plugged into the outbox engine (supervisor/delivery/outbox.py): sign, POST, read the answer.

Rows are written in the same statement as a job's completion or final failure
(``export_job_queue_notices``), one per job and event, each with its own
``webhook_id`` made once, so every retry carries the same ``webhook-id``. Any
worker sends them; the engine leases them, checks the job, and runs each
delivery in its own task, at most WEBHOOK_MAX_IN_FLIGHT_PER_TARGET at a time to one target (the
URL's origin), so a slow receiver holds up neither rendering, nor mail, nor
another target's deliveries.

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
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

import httpx
import msgspec
from standardwebhooks.webhooks import Webhook

from shared.config import Settings
from shared.vocabulary import (
    DeliveryOutcome,
    ErrorCategory,
    ExportType,
    JobStatus,
    OutputFormat,
    WebhookEvent,
)
from supervisor.delivery.links import Signs, download_link
from supervisor.delivery.outbox import Attempt, Disabled, Leased, NotSent, OutboxSpec, RetryPolicy, Sent
from supervisor.delivery.webhook_targets import Target, TargetRefused, TargetUnreachable, resolve_target
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

USER_AGENT = "export-worker-webhooks/1"
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
    """The webhook sender, plugged into the outbox engine (delivery/outbox.py): sign, POST, read the answer."""

    def __init__(self, settings: Settings, storage: Signs, metrics: Metrics) -> None:
        self.settings = settings
        self.hooks = settings.webhooks
        self.storage = storage
        self.metrics = metrics
        self.signer = Webhook(self.hooks.webhook_secret) if self.hooks.webhook_secret else None
        self.spec = OutboxSpec(
            name="webhook", table="export_webhook_outbox", done_column="delivered_at",
            lease_seconds=self.hooks.webhook_lease_seconds,
            retry=RetryPolicy(self.hooks.webhook_backoff_base_seconds, self.hooks.webhook_backoff_cap_seconds,
                              period_seconds=self.hooks.webhook_retry_period_seconds),
            per_target=self.hooks.webhook_max_in_flight_per_target, in_flight=self.hooks.webhook_max_in_flight,
            idle_seconds=1.0,
            sent_point="webhook-delivered",
        )

    def expected_status(self, item: Leased) -> JobStatus:
        return EXPECTED_STATUS[WebhookEvent(item.row["event"])]

    async def send(self, item: Leased) -> Attempt:
        try:
            body = await self._body(item)
            target = await self._target(item.row["url"])
            status, error = await self._post(target, item.row["webhook_id"], body)
        except Refused as exc:
            return NotSent(exc.error, give_up=exc.give_up)
        if 200 <= status < 300:
            return Sent(status)
        if status == 410:
            return Disabled(status, "410 Gone: the receiver disabled it")
        return NotSent(error, status=status or None)  # status 0: no answer at all

    def record(self, item: Leased, verdict: DeliveryOutcome, attempt: Attempt, retry_in: float) -> None:
        self.metrics.webhook_deliveries.labels(item.row["event"], verdict).inc()
        fields = {"job_id": item.job_id, "event": item.row["event"], "webhook_id": item.row["webhook_id"],
                  "attempt": item.attempts, "status_code": attempt.status}
        if verdict is DeliveryOutcome.DELIVERED:
            log.info("webhook delivered", extra=fields)
        elif verdict is DeliveryOutcome.DISABLED:
            log.warning("webhook disabled by the receiver (410 Gone)", extra=fields)
        else:
            error = attempt.error if isinstance(attempt, NotSent) else ""
            log.warning("webhook gave up" if verdict is DeliveryOutcome.FAILED else "webhook not delivered; will retry",
                        extra=fields | {"error": error, "retry_in_s": round(retry_in, 2)})

    async def _body(self, item: Leased) -> bytes:
        row, event = item.row, WebhookEvent(item.row["event"])
        file_url = expires = fmt = None
        if event is WebhookEvent.COMPLETED:
            ttl = self.settings.storage.signed_url_ttl_seconds
            # Taken before signing: the link then works at least until the time we state.
            expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ttl)
            file_url = await asyncio.to_thread(download_link, self.storage, row["storage_path"], ttl)
            fmt = OutputFormat.from_content_type(row["content_type"])
        data = WebhookData(
            id=UUID(item.job_id), status=JobStatus(row["job_status"]), export_type=ExportType(row["export_type"]),
            format=fmt, size_bytes=row["file_size_bytes"], file_url=file_url, file_url_expires_at=expires,
            error_category=ErrorCategory(row["error_category"]) if row["error_category"] else None,
            error_message=row["error_message"] if event is WebhookEvent.FAILED else None,
        )
        occurred = row["completed_at"] or item.created_at
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
