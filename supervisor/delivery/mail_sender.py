"""The mail sender, plugged into the outbox engine (supervisor/delivery/outbox.py): one mail per row.

The engine leases ``export_mail_outbox`` rows, checks the job is still in the
status the mail announces, and records the outcome; this module composes the mail
(a download link signed now, when it is sent) and hands it to the backend
(SendGrid, SMTP or ``.eml`` files, supervisor/delivery/mail.py). A mail never blocks or
fails a job. Every mail goes through the one provider: that is its one target.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from shared.config import Settings
from shared.vocabulary import DeliveryOutcome, JobStatus
from supervisor.delivery.downloads import download_filename, with_download_name
from supervisor.delivery.links import Signs, download_link
from supervisor.delivery.mail import (
    MailBackend,
    MailError,
    compose_completed,
    compose_failed,
    document_name,
    explain_failure,
)
from supervisor.delivery.outbox import Attempt, Leased, NotSent, OutboxSpec, RetryPolicy, Sent
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

MAIL_BACKOFF_BASE_SECONDS = 5.0
MAIL_BACKOFF_CAP_SECONDS = 3600.0


class MailSender:
    def __init__(self, settings: Settings, mail: MailBackend, storage: Signs, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.mail = mail
        self.storage = storage
        self.metrics = metrics
        self.spec = OutboxSpec(
            name="mail", table="export_mail_outbox", done_column="sent_at",
            lease_seconds=settings.mail.mail_lease_seconds,
            retry=RetryPolicy(MAIL_BACKOFF_BASE_SECONDS, MAIL_BACKOFF_CAP_SECONDS,
                              max_attempts=settings.mail.mail_max_attempts),
            per_target=settings.mail.mail_max_in_flight, in_flight=settings.mail.mail_max_in_flight,
            idle_seconds=5.0, sent_point="mail-sent",
        )

    def expected_status(self, item: Leased) -> JobStatus:
        return JobStatus(item.row["kind"])

    async def send(self, item: Leased) -> Attempt:
        row, job_id = item.row, item.job_id
        if row["kind"] == JobStatus.COMPLETED:
            ttl = self.settings.storage.signed_url_ttl_seconds
            # Taken before signing: the link then works at least until the time the mail states.
            expires = (datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ttl)).isoformat()
            url = await asyncio.to_thread(download_link, self.storage, row["storage_path"], ttl)
            # Named like the document: Supabase Storage and /files both honour ?download=.
            url = with_download_name(url, download_filename(row["payload"], row["content_type"], str(job_id)))
            mail = compose_completed(job_id, row["export_type"], url, expires, recipient=row["recipient"],
                                     document=document_name(row["payload"]))
        else:
            metadata = row.get("metadata") or {}
            words, step = explain_failure(row["error_category"] or "permanent", metadata.get("failure_reason"),
                                          row["error_message"] or "", metadata.get("render_failure"))
            mail = compose_failed(job_id, row["export_type"], words, recipient=row["recipient"],
                                  document=document_name(row["payload"]), next_step=step)
        try:
            await asyncio.to_thread(self.mail.send, mail)
        except MailError as exc:
            return NotSent(str(exc), status=exc.status, give_up=not exc.transient)
        return Sent()

    def record(self, item: Leased, verdict: DeliveryOutcome, attempt: Attempt, retry_in: float) -> None:
        kind = item.row["kind"]
        fields = {"job_id": item.job_id, "kind": kind}
        if verdict is DeliveryOutcome.DELIVERED:
            if self.metrics is not None:
                self.metrics.mails_sent.labels(kind).inc()
            log.info("mail sent", extra=fields)
            return
        if self.metrics is not None:
            self.metrics.mail_errors.labels(kind).inc()
        error = attempt.error if isinstance(attempt, NotSent) else ""
        log.warning("mail gave up" if verdict is DeliveryOutcome.FAILED else "mail send failed; will retry",
                    extra=fields | {"error": error, "retry_in_s": round(retry_in, 2)})
