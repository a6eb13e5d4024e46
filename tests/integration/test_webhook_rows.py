"""The webhook outbox rows are written by the statements that settle a job: export.completed
by the completion, export.failed only by a final failure (a settled failure or a stale rescue),
one per job and event, and nothing for a retried attempt or a job without a webhook."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.config import ConfigError
from shared.vocabulary import ErrorCategory, JobStatus
from supervisor.delivery.webhook_targets import check_default_url
from supervisor.queue.jobs import JobQueue
from supervisor.queue.migrate import sync_queue_settings
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(300)

URL = "https://hooks.example.com/exports"
SECRET = "whsec_" + base64.b64encode(b"webhook-rows-secret-0123456789ab").decode()


def hooks(db_url: str, job_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT event, url, webhook_id, attempts FROM export_webhook_outbox "
                            "WHERE job_id = %s ORDER BY id", (job_id,)).fetchall()


async def new_job(queue: JobQueue, webhook_url: str | None = URL) -> str:
    row = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf",
                                 payload={"source": {"kind": "html", "html": "<p>x</p>"}}, webhook_url=webhook_url)
    assert row["webhook_url"] == webhook_url and row["created"] is True
    return str(row["id"])


async def test_a_retried_failure_writes_none_and_the_final_one_writes_one(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue)
    (claim,) = await queue.claim(1)
    outcome = await queue.fail(claim, ErrorCategory.TRANSIENT, "flaky", retry_delay_ms=0)
    assert outcome.status is JobStatus.PENDING
    assert hooks(db_url, job_id) == []
    (claim,) = await queue.claim(1)
    outcome = await queue.fail(claim, ErrorCategory.PERMANENT, "broken for good")
    assert outcome.status is JobStatus.FAILED
    rows = hooks(db_url, job_id)
    assert [(r["event"], r["url"], r["attempts"]) for r in rows] == [("export.failed", URL, 0)]
    assert rows[0]["webhook_id"].startswith("msg_") and len(rows[0]["webhook_id"]) == 36


async def test_completion_writes_one_row_and_a_job_without_webhook_none(queue: JobQueue, db_url: str) -> None:
    hooked, plain = await new_job(queue), await new_job(queue, None)
    for claim in await queue.claim(2):
        await queue.complete(claim, storage_path=f"{claim.job_id}.pdf", file_url="u", file_size_bytes=3,
                             content_type="application/pdf", metadata={})
    assert [r["event"] for r in hooks(db_url, hooked)] == ["export.completed"]
    assert hooks(db_url, plain) == []


async def test_a_final_stale_rescue_writes_the_failed_event(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE export_jobs SET max_attempts = 1 WHERE id = %s", (job_id,))
    await queue.claim(1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE export_jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (job_id,))
    assert await queue.rescue_stale(60) == [(job_id, "failed")]
    assert [r["event"] for r in hooks(db_url, job_id)] == ["export.failed"]
    # A rescue that only sends the job back to pending writes nothing.
    again = await new_job(queue)
    await queue.claim(1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE export_jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (again,))
    assert await queue.rescue_stale(60) == [(again, "pending")]
    assert hooks(db_url, again) == []


def test_the_default_webhook_applies_to_jobs_created_without_one(db_url: str, tmp_path: Path) -> None:
    default = "https://hooks.example.com/default"
    settings = make_settings(tmp_path, db_url, WEBHOOK_SECRET=SECRET, WEBHOOK_DEFAULT_URL=default)
    sync_queue_settings(db_url, settings)
    with psycopg.connect(db_url, autocommit=True) as conn:
        create = "SELECT webhook_url FROM create_export_job(%s, 'pdf', %s::jsonb, NULL, false, NULL, NULL, %s)"
        payload = '{"source": {"kind": "html", "html": "<p>x</p>"}}'
        assert conn.execute(create, (str(uuid.uuid4()), payload, None)).fetchone() == (default,)
        assert conn.execute(create, (str(uuid.uuid4()), payload, URL)).fetchone() == (URL,)


@pytest.mark.parametrize(("url", "why"), [("http://hooks.example.com/x", "use https"),
                                          ("ftp://hooks.example.com/x", "scheme ftp")])
def test_a_default_webhook_that_breaks_the_rules_stops_the_start(db_url: str, tmp_path: Path,
                                                                 url: str, why: str) -> None:
    settings = make_settings(tmp_path, db_url, WEBHOOK_SECRET=SECRET, WEBHOOK_DEFAULT_URL=url)
    with pytest.raises(ConfigError, match=f"WEBHOOK_DEFAULT_URL is refused: .*{why}"):
        check_default_url(settings)


def test_a_default_webhook_needs_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_DEFAULT_URL is set but WEBHOOK_SECRET is not"):
        make_settings(tmp_path, "", WEBHOOK_DEFAULT_URL="https://hooks.example.com/x")


async def test_every_path_to_a_final_status_queues_through_one_function(queue: JobQueue, db_url: str) -> None:
    """Completion, a final failure and a final stale rescue each queue one mail and one webhook
    (export_job_queue_notices), asking export_job_recipient once per job (it was twice per
    failure, and Supabase's version reads auth.users)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE recipient_calls (job_user uuid)")
        conn.execute("""CREATE OR REPLACE FUNCTION export_job_recipient(p_user_id uuid, p_email text) RETURNS text
                        LANGUAGE plpgsql AS $$ BEGIN
                            INSERT INTO recipient_calls VALUES (p_user_id); RETURN 'user@example.com';
                        END $$""")
    completed, failed, rescued = await new_job(queue), await new_job(queue), await new_job(queue)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE export_jobs SET max_attempts = 1 WHERE id = %s", (rescued,))
    claims = {c.job_id: c for c in await queue.claim(3)}
    queued = await queue.complete(claims[completed], storage_path="k.pdf", file_url="u", file_size_bytes=3,
                                  content_type="application/pdf", metadata={})
    assert (queued.mail, queued.webhook) == (True, True)
    assert (await queue.fail(claims[failed], ErrorCategory.PERMANENT, "broken")).status is JobStatus.FAILED
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE export_jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (rescued,))
    assert await queue.rescue_stale(60) == [(rescued, "failed")]
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        mails = conn.execute("SELECT job_id::text, kind, recipient FROM export_mail_outbox").fetchall()
        calls = conn.execute("SELECT j.id::text AS job_id, count(*) AS n FROM recipient_calls AS c "
                             "JOIN export_jobs AS j ON j.user_id = c.job_user GROUP BY j.id").fetchall()
    assert sorted((m["job_id"], m["kind"]) for m in mails) == sorted(
        [(completed, "completed"), (failed, "failed"), (rescued, "failed")])
    assert {m["recipient"] for m in mails} == {"user@example.com"}
    assert {c["job_id"]: c["n"] for c in calls} == {completed: 1, failed: 1, rescued: 1}
    assert [r["event"] for r in hooks(db_url, completed)] == ["export.completed"]
    for job_id in (failed, rescued):
        assert [r["event"] for r in hooks(db_url, job_id)] == ["export.failed"]
