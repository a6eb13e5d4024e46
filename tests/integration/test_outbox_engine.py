"""The one outbox engine (supervisor/delivery/outbox.py) with its two senders: what a row costs the
database, and a send whose mark-sent meets a dropped connection (real PostgreSQL, the
SendGrid and webhook fakes, pg_terminate_backend on the worker's own connections)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncCursor
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from shared.testhooks import GATE_ENV
from supervisor.delivery.mail import build_mail_backend
from supervisor.delivery.mail_sender import MailSender
from supervisor.delivery.outbox import Outbox, Sender, outbox_queries
from supervisor.delivery.storage import build_storage
from supervisor.delivery.webhooks import WebhookSender
from supervisor.tasks import TaskOwner
from supervisor.telemetry.metrics import Metrics
from tests.integration.test_delivery_e2e import (
    create_jobs,
    outbox,
    remote_env,
    running,
    sendgrid_fake,
    sendgrid_mails_for,
    settings_for,
    sql,
    storage_fake,
    until,
)

try:
    from tests.fakes.sendgrid_api import FakeSendGrid
    from tests.fakes.supabase_storage import FakeSupabaseStorage
    from tests.fakes.webhook_receiver import WebhookReceiver
except ModuleNotFoundError:  # pragma: no cover
    from fakes.sendgrid_api import FakeSendGrid  # type: ignore[no-redef,import-not-found,unused-ignore]
    from fakes.supabase_storage import FakeSupabaseStorage  # type: ignore[no-redef,import-not-found,unused-ignore]
    from fakes.webhook_receiver import WebhookReceiver  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.timeout(90)
__all__ = ["sendgrid_fake", "storage_fake"]  # fixtures used by name

SECRET = "whsec_" + base64.b64encode(b"outbox-engine-secret-0123456789a").decode()
ROWS = 20


class CountingCursor(AsyncCursor[Any]):
    """Counts the statements this test's pool sends (the measure of what a row costs)."""

    statements = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.statements += 1
        return await super().execute(*args, **kwargs)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as server:
        yield server


def finished_jobs_with_notices(db_url: str, hook_url: str, n: int) -> list[str]:
    """n completed jobs, each with one queued mail and one queued webhook."""
    ids = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for job_id, _user in create_jobs(db_url, n, "reader@example.com"):
            conn.execute("UPDATE export_jobs SET webhook_url = %s, status = 'completed', completed_at = now(), "
                         "storage_path = 'u/x.pdf', content_type = 'application/pdf', file_size_bytes = 3 "
                         "WHERE id = %s", (hook_url, job_id))
            conn.execute("SELECT export_job_queue_notices(j) FROM export_jobs AS j WHERE id = %s", (job_id,))
            ids.append(job_id)
    return ids


async def statements_to_drain(db_url: str, settings: Settings, sender: Sender, tasks: TaskOwner) -> int:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, kwargs={"autocommit": True, "cursor_factory": CountingCursor}, open=False)
    await pool.open()
    try:
        engine = Outbox(pool, "measure", sender, lambda coro, name: tasks.spawn(coro, name))
        CountingCursor.statements = 0
        claimed = 0
        while claimed < ROWS:
            got = await engine.drain_once()
            await engine.wait_idle()
            assert got > 0, "every row is due"
            claimed += got
        return CountingCursor.statements
    finally:
        await pool.close()


async def test_a_mail_and_a_webhook_each_cost_at_most_one_write_after_a_shared_claim(
    tmp_path: Path, db_url: str, receiver: WebhookReceiver
) -> None:
    """Before the engine, a webhook cost a get_job and a write besides its share of a claim
    (41 statements for 20 rows); the job's row now comes with the claim, and the mark-sent
    writes of sends that end together share one statement (group commit)."""
    settings = settings_for(tmp_path, db_url, WEBHOOK_SECRET=SECRET, TRUSTED_PRIVATE_HOSTS=f"127.0.0.1:{receiver.port}",
                            LINK_SECRET="outbox-engine-link-secret-0123456789")
    ids = finished_jobs_with_notices(db_url, receiver.hook_url(), ROWS)
    data_dir = Path(settings.data_dir)
    storage, metrics = build_storage(settings, data_dir), Metrics()
    tasks = TaskOwner(metrics, on_fatal=lambda why: pytest.fail(why))
    mail = MailSender(settings, build_mail_backend(settings, data_dir), storage, metrics)
    mail_statements = await statements_to_drain(db_url, settings, mail, tasks)
    hook_statements = await statements_to_drain(db_url, settings, WebhookSender(settings, storage, metrics), tasks)
    claims = -(-ROWS // 4)  # one target each, four sends in flight to it: a claim per four rows
    assert claims < mail_statements <= ROWS + claims, mail_statements
    assert claims < hook_statements <= ROWS + claims, hook_statements
    assert all(r["sent_at"] is not None for j in ids for r in outbox(db_url, j))
    assert len(receiver.snapshot()) == ROWS and all(r.error is None for r in receiver.snapshot())
    assert metrics.registry.get_sample_value("export_background_failures_total", {"task": "outbox send"}) is None
    print(f"\n{ROWS} mails: {mail_statements} statements; {ROWS} webhooks: {hook_statements} statements")


async def test_a_mail_whose_mark_sent_meets_a_dropped_connection_is_recorded_not_resent(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage, sendgrid_fake: FakeSendGrid,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 21 saw mails written but not marked sent when their connection reset, then sent
    again after the lease. The worker's connections are cut between the send and its write:
    the pool's check on checkout (supervisor/queue/database.py) or, if the cut comes later, the
    write's own retry puts it on a new connection; the row is recorded on its first attempt,
    and SendGrid got one mail."""
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv(GATE_ENV, str(gate))
    settings = settings_for(tmp_path, db_url, **(remote_env(storage_fake, sendgrid_fake) | {"WORKER_ID": "mark-sent"}))
    pid = os.getpid()
    (gate / f"arm-mail-sent-{pid}").touch()
    ((job_id, _user),) = create_jobs(db_url, 1)
    async with running(settings, db_url):
        paused = gate / f"paused-mail-sent-{pid}"
        await until(paused.exists, what="the sender paused after SendGrid accepted the mail")
        assert paused.read_text() == job_id and len(sendgrid_mails_for(sendgrid_fake, job_id)) == 1
        cut = sql(db_url, "SELECT pg_terminate_backend(pid) AS cut FROM pg_stat_activity "
                          "WHERE datname = current_database() AND application_name = %s",
                  "export-worker mark-sent")
        assert cut and all(r["cut"] for r in cut)
        (gate / f"go-mail-sent-{pid}").touch()
        await until(lambda: outbox(db_url, job_id)[0]["sent_at"] is not None, what="the mail recorded as sent")
    (row,) = outbox(db_url, job_id)
    assert row["attempts"] == 1 and row["last_error"] is None and row["locked_by"] == "mark-sent"
    assert len(sendgrid_mails_for(sendgrid_fake, job_id)) == 1


@pytest.mark.parametrize(("table", "done_column"), [("export_mail_outbox", "sent_at"),
                                                     ("export_webhook_outbox", "delivered_at")])
async def test_one_fence_for_both_outboxes_lease_and_attempt(
    pool: AsyncConnectionPool[Any], db_url: str, table: str, done_column: str
) -> None:
    """A send whose lease ended and was taken again, even by its own WORKER_ID, writes nothing:
    the mail fence checked the lease holder only, so a worker's stale send could mark its own
    newer lease's row."""
    finished_jobs_with_notices(db_url, "https://hooks.example.com/x", 1)
    queries = outbox_queries(table, done_column)
    claim = {"limit": 1, "scan": 4, "per_target": 4, "full_targets": [], "busy_targets": [], "busy_counts": [],
             "worker_id": "same-worker", "lease_seconds": 60}

    async def lease() -> dict[str, Any]:
        async with pool.connection() as conn:
            rows = await (await conn.cursor(row_factory=dict_row).execute(queries["claim"], claim)).fetchall()
        assert len(rows) == 1 and rows[0]["job_status"] == "completed"
        return dict(rows[0])

    async def done(row: dict[str, Any]) -> int:
        async with pool.connection() as conn:
            cur = await conn.execute(queries["done"], {"ids": [row["id"]], "worker_id": "same-worker",
                                                       "attempts": [row["attempts"]], "statuses": [200]})
            return cur.rowcount

    first = await lease()
    sql(db_url, f"UPDATE {table} SET locked_until = now() - interval '1 second'")  # the lease ran out
    second = await lease()
    assert (first["attempts"], second["attempts"]) == (1, 2)
    assert await done(first) == 0, "the ended lease's write is fenced out"
    assert sql(db_url, f"SELECT {done_column} AS done FROM {table}")[0]["done"] is None
    assert await done(second) == 1
