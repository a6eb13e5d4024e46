"""End-to-end delivery: a real Supervisor (null render child), real PostgreSQL, the real
`supabase` and `sendgrid` clients against local fakes of their HTTP APIs, and the
embedded defaults (local files with signed links, .eml mail). DESIGN.md section 5."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from render_child.null_child import TINY_PDF, null_child_entry
from shared.config import Settings
from supervisor.delivery.fence import UploadJournal
from supervisor.delivery.links import LinkSigner, load_or_create_secret
from supervisor.delivery.storage import SupabaseStorage, build_storage, object_key
from supervisor.queue.database import open_pool
from supervisor.queue.jobs import ClaimLost, JobQueue
from supervisor.queue.migrate import sync_queue_settings
from supervisor.queue.retention import run_retention
from supervisor.runner import Supervisor
from tests.conftest import html_payload, make_settings

try:
    from tests.fakes.sendgrid_api import FakeSendGrid
    from tests.fakes.supabase_storage import FakeSupabaseStorage
except ModuleNotFoundError:  # pragma: no cover
    from fakes.sendgrid_api import FakeSendGrid  # type: ignore[no-redef,import-not-found,unused-ignore]
    from fakes.supabase_storage import FakeSupabaseStorage  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.timeout(300)

KEY = "service-role-key-for-delivery"
SG_KEY = "SG.delivery-test-key"
BUCKET = "export-files"

FAST = {
    "BREAKER_FAILURE_THRESHOLD": "2",
    "BREAKER_COOLDOWN_SECONDS": "1",
    "RETRY_BACKOFF_BASE_MS": "50",
    "RETRY_BACKOFF_CAP_MS": "200",
    "MAX_CONCURRENT_RENDERS": "2",
    "ENABLE_CANARY_EXPORT": "true",
    "POLLING_INTERVAL_BUSY_MS": "100",
    "POLLING_INTERVAL_IDLE_MS": "200",
    "GRACEFUL_SHUTDOWN_TIMEOUT_MS": "3000",
    "WORKER_ID": "delivery-worker",
}


# ---- helpers ------------------------------------------------------------------------


@pytest.fixture
def storage_fake() -> Iterator[FakeSupabaseStorage]:
    with FakeSupabaseStorage(service_key=KEY) as server:
        yield server


@pytest.fixture
def sendgrid_fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=SG_KEY) as server:
        yield server


def remote_env(storage: FakeSupabaseStorage | None, sendgrid: FakeSendGrid | None) -> dict[str, str]:
    env = dict(FAST)
    if storage is not None:
        env |= {"SUPABASE_URL": storage.url, "SUPABASE_SERVICE_ROLE_KEY": KEY, "STORAGE_BUCKET": BUCKET}
    if sendgrid is not None:
        env |= {"SENDGRID_API_KEY": SG_KEY, "SENDGRID_BASE_URL": sendgrid.url}
    return env


def settings_for(tmp_path: Path, db_url: str, **env: str) -> Settings:
    s = make_settings(tmp_path, db_url, **env)
    sync_queue_settings(db_url, s)
    return s


@contextlib.asynccontextmanager
async def running(settings: Settings, db_url: str, **kw: Any) -> AsyncIterator[Supervisor]:
    sup = Supervisor(settings, db_url, child_target=null_child_entry, serve_http=False, run_migrations=False, **kw)
    task = asyncio.create_task(sup.run())
    started = asyncio.create_task(sup.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()  # raises the setup error
    assert started in done, "supervisor did not start"
    try:
        yield sup
    finally:
        sup.request_stop()
        try:
            await asyncio.wait_for(task, 20)
        except TimeoutError:
            sup.request_stop(fast=True)
            await asyncio.wait_for(task, 10)


async def until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 60, what: str = "") -> None:
    # At least 60 s whatever the caller asked: a busy machine (make test-stress) delays every
    # event, and a wait that ends early costs nothing.
    timeout = max(timeout, 60)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.05)


def sql(db_url: str, statement: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def jobs(db_url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = sql(db_url, "SELECT * FROM export_jobs WHERE id = ANY(%s::uuid[])", ids)
    return {str(r["id"]): r for r in rows}


def all_status(db_url: str, ids: list[str], status: str) -> Callable[[], bool]:
    def check() -> bool:
        found = jobs(db_url, ids)
        return len(found) == len(ids) and all(r["status"] == status for r in found.values())

    return check


def outbox(db_url: str, job_id: str) -> list[dict[str, Any]]:
    return sql(db_url, "SELECT * FROM export_mail_outbox WHERE job_id = %s ORDER BY id", job_id)


def create_jobs(db_url: str, n: int, email_addr: str | None = "user@example.com") -> list[tuple[str, str]]:
    """n jobs, one user each (per-user limits stay out of the way); [(job_id, user_id)]."""
    out = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(n):
            user = str(uuid.uuid4())
            row = conn.execute(
                "SELECT id FROM create_export_job(%s, 'pdf', %s, NULL, false, NULL, %s)",
                (user, json.dumps(html_payload()), email_addr),
            ).fetchone()
            assert row is not None
            out.append((str(row[0]), user))
    return out


def sendgrid_mails_for(fake: FakeSendGrid, job_id: str) -> list[dict[str, Any]]:
    found = []
    for message in list(fake.messages):
        args: dict[str, Any] = dict(message.get("custom_args") or {})
        for p in message.get("personalizations", []):
            args |= p.get("custom_args") or {}
        if args.get("job_id") == job_id:
            found.append(message)
    return found


def mail_text(message: dict[str, Any]) -> str:
    return "\n".join(c.get("value", "") for c in message.get("content", []))


def read_eml(path: Path) -> tuple[email.message.EmailMessage, str]:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    return msg, body.get_content()


# ---- 1. happy path through the real clients ------------------------------------------------


async def test_happy_path_supabase_and_sendgrid(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage, sendgrid_fake: FakeSendGrid
) -> None:
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, sendgrid_fake))
    created = create_jobs(db_url, 5)
    ids = [j for j, _ in created]
    async with running(settings, db_url):
        await until(all_status(db_url, ids, "completed"), what="all jobs completed")
        await until(lambda: len(sendgrid_fake.messages) >= len(ids), what="one mail per job")
        await asyncio.sleep(0.3)  # a duplicate would show up here

    rows = jobs(db_url, ids)
    for job_id, user in created:
        path = f"{user}/{job_id}/1.pdf"
        row = rows[job_id]
        assert row["storage_path"] == path
        assert row["attempts"] == 1
        assert storage_fake.upload_counts[path] == 1, storage_fake.upload_counts
        assert storage_fake.objects[(BUCKET, path)].body == TINY_PDF
        assert storage_fake.objects[(BUCKET, path)].content_type == "application/pdf"
        (upload,) = [u for u in storage_fake.uploads if u.path == path]
        assert upload.x_upsert == "true"
        assert upload.content_type == "application/pdf"
        signed_prefix = f"{storage_fake.url}/storage/v1/object/sign/{BUCKET}/{path}?token="
        assert row["file_url"].startswith(signed_prefix), row["file_url"]
        assert row["file_size_bytes"] == len(TINY_PDF)
        mails = sendgrid_mails_for(sendgrid_fake, job_id)
        assert len(mails) == 1, f"{job_id}: {len(mails)} mails"
        assert f"/object/sign/{BUCKET}/{path}?token=" in mail_text(mails[0])
        assert mails[0]["personalizations"][0]["to"][0]["email"] == "user@example.com"
        (ob,) = outbox(db_url, job_id)
        assert ob["kind"] == "completed" and ob["sent_at"] is not None
    assert len(sendgrid_fake.messages) == len(ids)
    assert set(sendgrid_fake.authorizations) == {f"Bearer {SG_KEY}"}


# ---- 2. storage answering 503: breaker opens, jobs wait, nothing fails -------------------


async def test_storage_outage_defers_without_spending_attempts(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage
) -> None:
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, None))
    storage_fake.fail(503)
    created = create_jobs(db_url, 4)
    ids = [j for j, _ in created]
    async with running(settings, db_url) as sup:
        states: set[str] = set()

        async def watch() -> None:
            while True:
                with contextlib.suppress(RuntimeError):  # before the parts are assembled
                    states.add(sup.parts.breaker.state)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            await until(lambda: "open" in states, what="breaker open")

            def all_deferred() -> bool:
                found = jobs(db_url, ids)
                return all(
                    (r["metadata"] or {}).get("storage_deferrals", 0) >= 1 for r in found.values()
                )

            await until(all_deferred, what="every job deferred at least once")
            # While the store is down: nothing failed, no attempt spent, waiting for later.
            for _ in range(10):
                rows = sql(
                    db_url,
                    "SELECT id, status, attempts, max_attempts, available_at > now() AS later, error_category "
                    "FROM export_jobs WHERE id = ANY(%s::uuid[])",
                    ids,
                )
                assert all(r["status"] in ("pending", "processing") for r in rows), rows
                # Deferral does not spend: the allowance grows with each claim it hands back.
                assert all(r["max_attempts"] - r["attempts"] >= 2 for r in rows), rows
                await asyncio.sleep(0.1)
            # Deferred jobs wait: pending with available_at in the future (after the cooldown).
            await until(
                lambda: any(
                    r["later"] for r in sql(
                        db_url,
                        "SELECT available_at > now() AS later FROM export_jobs "
                        "WHERE status = 'pending' AND error_category = 'transient'",
                    )
                ),
                what="a deferred job waiting for later",
            )
            requests_during_outage = storage_fake.request_count
            # The breaker keeps most calls away from the failing store.
            await asyncio.sleep(1.5)
            assert storage_fake.request_count - requests_during_outage <= 6, (
                storage_fake.request_count - requests_during_outage
            )
            storage_fake.recover()
            await until(all_status(db_url, ids, "completed"), timeout=30, what="all completed after recovery")
        finally:
            watcher.cancel()
        assert sup.parts.breaker.state == "closed"

    final = jobs(db_url, ids)
    for job_id, user in created:
        path = final[job_id]["storage_path"]
        assert path.startswith(f"{user}/{job_id}/")
        assert final[job_id]["status"] == "completed"
        # Each deferral handed its attempt back: the allowance grew by as many claims.
        assert final[job_id]["max_attempts"] - final[job_id]["attempts"] == 2, final[job_id]
        assert final[job_id]["error_message"] is None
        assert (BUCKET, path) in storage_fake.objects
        assert storage_fake.upload_counts[path] == 1, storage_fake.upload_counts
    assert sum(1 for (b, _p) in storage_fake.objects if b == BUCKET) == len(ids)


# ---- 3. mail provider down: jobs complete, mails wait, each sent once later --------------


async def test_mail_outage_loses_nothing_and_sends_once(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage, sendgrid_fake: FakeSendGrid
) -> None:
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, sendgrid_fake))
    sendgrid_fake.set_mode("503")
    created = create_jobs(db_url, 4)
    ids = [j for j, _ in created]
    async with running(settings, db_url) as sup:
        await until(all_status(db_url, ids, "completed"), what="completed despite mail outage")

        def errors_recorded() -> bool:
            rows = sql(db_url, "SELECT * FROM export_mail_outbox WHERE job_id = ANY(%s::uuid[])", ids)
            return len(rows) == len(ids) and all(r["last_error"] and r["sent_at"] is None for r in rows)

        await until(errors_recorded, what="outbox rows with last_error")
        rows = sql(db_url, "SELECT * FROM export_mail_outbox WHERE job_id = ANY(%s::uuid[])", ids)
        assert all("503" in r["last_error"] for r in rows), [r["last_error"] for r in rows]
        assert all(r["gave_up_at"] is None for r in rows)
        assert sendgrid_fake.messages == []

        sendgrid_fake.set_mode("ok")
        sql(db_url, "UPDATE export_mail_outbox SET available_at = now()")
        sup.parts.outbox.wake.set()

        def all_sent() -> bool:
            rows = sql(db_url, "SELECT sent_at FROM export_mail_outbox WHERE job_id = ANY(%s::uuid[])", ids)
            return all(r["sent_at"] is not None for r in rows)

        await until(all_sent, what="all mails sent after recovery")
        # Another drain finds nothing more to send.
        assert await sup.parts.outbox.drain_once() == 0

    for job_id, user in created:
        mails = sendgrid_mails_for(sendgrid_fake, job_id)
        assert len(mails) == 1, f"{job_id}: {len(mails)} mails"
        assert f"/object/sign/{BUCKET}/{user}/{job_id}/1.pdf?token=" in mail_text(mails[0])
        (ob,) = outbox(db_url, job_id)
        assert ob["last_error"] is None and ob["sent_at"] is not None
    assert len(sendgrid_fake.messages) == len(ids)


# ---- 4. a job whose completion was lost runs again: its own object, one mail -------------


async def test_rerun_after_lost_completion_writes_its_own_object_and_mails_once(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage, sendgrid_fake: FakeSendGrid
) -> None:
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, sendgrid_fake))
    ((job_id, user),) = create_jobs(db_url, 1)
    out = tmp_path / "first.pdf"
    out.write_bytes(TINY_PDF)

    # A first worker claims, passes its fence check, uploads; then its claim is rescued before it completes.
    pool = await open_pool(db_url, settings, max_size=2)
    store = SupabaseStorage(storage_fake.url, KEY, BUCKET, timeout_seconds=5)
    try:
        first = JobQueue(pool, "lost-worker", settings.retry)
        (claim,) = await first.claim(1)
        lost_path = object_key(user, job_id, claim.attempt, "application/pdf")
        assert await UploadJournal(pool, 'lost-worker').fence([(claim, lost_path)]) == {job_id: False}
        await asyncio.to_thread(store.put, lost_path, out, "application/pdf")
        url = await asyncio.to_thread(store.signed_url, lost_path, 60)
        sql(db_url, "UPDATE export_jobs SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s", job_id)
        rescued = await JobQueue(pool, "rescuer", settings.retry).rescue_stale(60)
        assert rescued == [(job_id, "pending")]
        with pytest.raises(ClaimLost):
            await first.complete(claim, storage_path=lost_path, file_url=url, file_size_bytes=len(TINY_PDF),
                                 content_type="application/pdf", metadata={})
        assert outbox(db_url, job_id) == []

        async with running(settings, db_url):
            await until(all_status(db_url, [job_id], "completed"), what="re-run completed")
            await until(lambda: len(sendgrid_fake.messages) >= 1, what="mail")
            await asyncio.sleep(0.3)

        row = jobs(db_url, [job_id])[job_id]
        won_path = object_key(user, job_id, 2, "application/pdf")
        assert row["attempts"] == 2 and row["storage_path"] == won_path
        # Each claim wrote its own object once; the lost one's never replaced the winner's.
        assert storage_fake.upload_counts[lost_path] == 1 and storage_fake.upload_counts[won_path] == 1
        assert len(outbox(db_url, job_id)) == 1
        assert len(sendgrid_mails_for(sendgrid_fake, job_id)) == 1

        # The lost worker's late completion still changes nothing.
        with pytest.raises(ClaimLost):
            await first.complete(claim, storage_path=lost_path, file_url=url, file_size_bytes=1,
                                 content_type="application/pdf", metadata={})
        assert jobs(db_url, [job_id])[job_id]["file_size_bytes"] == len(TINY_PDF)
        assert len(outbox(db_url, job_id)) == 1

        # Retention's orphan sweep removes the lost claim's object and keeps the winner's.
        result = await run_retention(pool, store, settings.retention, orphan_after_seconds=0)
        assert result.orphans_deleted == 1
        assert [k for k in storage_fake.objects if k[1].startswith(f"{user}/")] == [(BUCKET, won_path)]
        assert sql(db_url, "SELECT storage_key FROM export_uploads") == []
    finally:
        store.close()
        await pool.close()


async def test_double_complete_of_one_claim_queues_one_mail(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url, **FAST)
    ((job_id, user),) = create_jobs(db_url, 1)
    pool = await open_pool(db_url, settings, max_size=2)
    try:
        q = JobQueue(pool, "w1", settings.retry)
        (claim,) = await q.claim(1)
        args: dict[str, Any] = {"storage_path": f"{user}/{job_id}.pdf", "file_url": "http://x/f", "file_size_bytes": 10,
                "content_type": "application/pdf", "metadata": {}}
        await q.complete(claim, **args)
        with pytest.raises(ClaimLost):
            await q.complete(claim, **args)
        rows = outbox(db_url, job_id)
        assert [(r["kind"], r["recipient"]) for r in rows] == [("completed", "user@example.com")]
    finally:
        await pool.close()


# ---- 5. retention removes files with their rows --------------------------------------------


async def test_retention_removes_local_file_with_row(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url, **FAST)
    ((job_id, user),) = create_jobs(db_url, 1)
    async with running(settings, db_url):
        await until(all_status(db_url, [job_id], "completed"), what="completed")
    data_dir = Path(settings.data_dir).resolve()
    file = data_dir / "files" / user / job_id / "1.pdf"
    assert file.read_bytes() == TINY_PDF

    sql(db_url, "UPDATE export_jobs SET created_at = now() - interval '31 days', "
                "completed_at = now() - interval '31 days' WHERE id = %s", job_id)
    pool = await open_pool(db_url, settings, max_size=2)
    try:
        result = await run_retention(pool, build_storage(settings, data_dir), settings.retention)
    finally:
        await pool.close()
    assert result.jobs_deleted == 1 and result.files_deleted >= 1
    assert not file.exists()
    assert jobs(db_url, [job_id]) == {}
    assert sql(db_url, "SELECT * FROM export_mail_outbox WHERE job_id = %s", job_id) == []


async def test_retention_removes_supabase_object_with_row(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage
) -> None:
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, None))
    ((job_id, user),) = create_jobs(db_url, 1)
    path = f"{user}/{job_id}/1.pdf"
    async with running(settings, db_url):
        await until(all_status(db_url, [job_id], "completed"), what="completed")
    assert (BUCKET, path) in storage_fake.objects

    # Only the job's age (created_at, as in the seed's SQL): files retention keys on completed_at.
    sql(db_url, "UPDATE export_jobs SET created_at = now() - interval '31 days' WHERE id = %s", job_id)
    pool = await open_pool(db_url, settings, max_size=2)
    store = build_storage(settings, Path(settings.data_dir))
    try:
        result = await run_retention(pool, store, settings.retention)
    finally:
        await pool.close()
        store.close()  # type: ignore[attr-defined]
    assert result.jobs_deleted == 1
    assert [path] in storage_fake.remove_requests
    assert ("DELETE", f"/storage/v1/object/{BUCKET}") in storage_fake.requests
    assert (BUCKET, path) not in storage_fake.objects
    assert jobs(db_url, [job_id]) == {}


# ---- 6. status changes reach a LISTEN client ---------------------------------------------


async def test_status_changes_reach_listen_client(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url, **FAST)
    received: list[dict[str, Any]] = []
    listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        await listener.execute("LISTEN export_job_status")

        async def collect() -> None:
            async for note in listener.notifies():
                received.append(json.loads(note.payload))

        collector = asyncio.create_task(collect())
        ((job_id, user),) = create_jobs(db_url, 1)
        async with running(settings, db_url):
            await until(
                lambda: any(m["id"] == job_id and m["status"] == "completed" for m in received),
                what="completed notification",
            )
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    finally:
        await listener.close()

    mine = [m for m in received if m["id"] == job_id]
    assert [m["status"] for m in mine] == ["pending", "processing", "completed"], mine
    for m in mine:
        assert set(m) == {"id", "user_id", "status", "attempts", "cancel_requested"}, m
        assert m["user_id"] == user and m["cancel_requested"] is False
    assert [m["attempts"] for m in mine] == [0, 1, 1]


# ---- 7. embedded defaults: local file + .eml ---------------------------------------------


async def test_embedded_defaults_file_and_eml(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url, **FAST)
    assert not settings.storage.supabase_url and not settings.mail.sendgrid_api_key
    assert not settings.mail.smtp_host
    ((job_id, user),) = create_jobs(db_url, 1, "reader@example.com")
    data_dir = Path(settings.data_dir).resolve()
    eml = data_dir / "mail" / f"{job_id}-completed.eml"
    async with running(settings, db_url):
        await until(all_status(db_url, [job_id], "completed"), what="completed")
        await until(eml.exists, what="eml written")

    path = f"{user}/{job_id}/1.pdf"
    assert (data_dir / "files" / path).read_bytes() == TINY_PDF
    row = jobs(db_url, [job_id])[job_id]
    signer = LinkSigner(load_or_create_secret(settings.storage.link_secret, data_dir))
    for link in (row["file_url"],):
        parsed = urllib.parse.urlsplit(link)
        assert urllib.parse.unquote(parsed.path) == f"/files/{path}"
        q = dict(urllib.parse.parse_qsl(parsed.query))
        assert signer.verify(path, q["expires"], q["sig"])
    msg, text = read_eml(eml)
    assert msg["To"] == "reader@example.com"
    assert f"/files/{path}?expires=" in text
    link = next(w for w in text.split() if "/files/" in w)
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))
    assert signer.verify(path, q["expires"], q["sig"])
    assert sorted(p.name for p in (data_dir / "mail").glob("*.eml")) == [eml.name]


# ---- 8. a final failure mails once, in plain words -----------------------------------------


async def test_final_failure_mails_once_in_plain_words(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url, **FAST)
    ((job_id, _user),) = create_jobs(db_url, 1, "reader@example.com")
    # A payload the creation function would refuse, written behind its back: a price as a number.
    menu = {"restaurant": {"name": "Chez Bars"}, "sections": [{"title": "Entrées", "items": [
        {"name": "Soupe à l'oignon", "price": 9.5, "currency": "EUR"}]}]}
    sql(db_url, "UPDATE export_jobs SET payload = %s::jsonb WHERE id = %s",
        json.dumps({"source": {"kind": "menu", "menu": menu}}), job_id)
    data_dir = Path(settings.data_dir).resolve()
    eml = data_dir / "mail" / f"{job_id}-failed.eml"
    async with running(settings, db_url) as sup:
        await until(all_status(db_url, [job_id], "failed"), what="failed")
        await until(eml.exists, what="failure eml")
        await asyncio.sleep(0.3)
        assert await sup.parts.outbox.drain_once() == 0

    row = jobs(db_url, [job_id])[job_id]
    assert row["error_category"] == "validation" and row["attempts"] == 1
    assert [r["kind"] for r in outbox(db_url, job_id)] == ["failed"]
    assert sorted(p.name for p in (data_dir / "mail").glob("*.eml")) == [eml.name]
    msg, text = read_eml(eml)
    assert "could not be completed" in msg["Subject"]
    assert "could not be completed: something in the document needs correcting." in text
    # the dish as the owner named it, what they wrote, what is expected, with an example
    assert 'Price of "Soupe à l\'oignon" (section "Entrées"): you wrote 9.5' in " ".join(text.split())
    assert 'like "9.50"' in text
    assert "source.menu" in row["error_message"]  # the path stays for operators and programs
    for internal in ("Traceback", "Error:", "PayloadError", "export_jobs", "psycopg", "regex", "Expected",
                     "`", "str | null", "float", "$.", "source.menu", "items.0"):
        assert internal not in text, (internal, text)


# ---- 2b. an endless storage outage still ends (DESIGN: a job never retries forever) -----


async def test_endless_storage_outage_ends_in_one_failure_mail(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage
) -> None:
    from supervisor.settle import MAX_STORAGE_DEFERRALS

    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, None))
    storage_fake.fail(503)
    ((job_id, _user),) = create_jobs(db_url, 1, "reader@example.com")
    # The job has already waited out MAX_STORAGE_DEFERRALS cooldowns.
    sql(db_url, "UPDATE export_jobs SET metadata = jsonb_build_object('storage_deferrals', %s::int) WHERE id = %s",
        MAX_STORAGE_DEFERRALS, job_id)
    eml = Path(settings.data_dir).resolve() / "mail" / f"{job_id}-failed.eml"
    async with running(settings, db_url):
        await until(all_status(db_url, [job_id], "failed"), timeout=40, what="failed after deferrals ran out")
        await until(eml.exists, what="failure eml")
    row = jobs(db_url, [job_id])[job_id]
    assert row["error_category"] == "transient"
    assert row["attempts"] == row["max_attempts"]
    assert "Storage upload failed" in row["error_message"]
    assert [r["kind"] for r in outbox(db_url, job_id)] == ["failed"]
    _msg, text = read_eml(eml)
    assert "the file could not be stored" in text


# ---- more delivery failures --------------------------------------------------------------


async def test_permanent_storage_error_fails_once_with_one_mail(tmp_path: Path, db_url: str) -> None:
    # The bucket does not exist: a 404, which retrying cannot fix.
    with FakeSupabaseStorage(service_key=KEY, buckets=()) as fake:
        settings = settings_for(tmp_path, db_url, **remote_env(fake, None))
        ((job_id, _user),) = create_jobs(db_url, 1, "reader@example.com")
        eml = Path(settings.data_dir).resolve() / "mail" / f"{job_id}-failed.eml"
        async with running(settings, db_url) as sup:
            await until(all_status(db_url, [job_id], "failed"), what="failed")
            await until(eml.exists, what="failure eml")
            assert sup.parts.breaker.state == "closed"  # the store answered: not an outage
    row = jobs(db_url, [job_id])[job_id]
    assert row["error_category"] == "permanent" and row["attempts"] == 1
    assert "Bucket not found" in row["error_message"]
    assert [r["kind"] for r in outbox(db_url, job_id)] == ["failed"]
    assert "the file could not be stored" in read_eml(eml)[1]


async def test_retention_keeps_row_while_its_file_cannot_be_deleted(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage
) -> None:
    from supervisor.delivery.storage import StorageError

    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, None))
    ((job_id, user),) = create_jobs(db_url, 1)
    path = f"{user}/{job_id}/1.pdf"
    async with running(settings, db_url):
        await until(all_status(db_url, [job_id], "completed"), what="completed")
    sql(db_url, "UPDATE export_jobs SET created_at = now() - interval '31 days' WHERE id = %s", job_id)
    pool = await open_pool(db_url, settings, max_size=2)
    store = build_storage(settings, Path(settings.data_dir))
    try:
        storage_fake.fail(503)
        with pytest.raises(StorageError):
            await run_retention(pool, store, settings.retention)
        assert job_id in jobs(db_url, [job_id])  # the row stays while its file does
        storage_fake.recover()
        result = await run_retention(pool, store, settings.retention)
    finally:
        await pool.close()
        store.close()  # type: ignore[attr-defined]
    assert result.jobs_deleted == 1
    assert (BUCKET, path) not in storage_fake.objects and jobs(db_url, [job_id]) == {}


async def test_rejected_mail_gives_up_without_retrying(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage, sendgrid_fake: FakeSendGrid
) -> None:
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, sendgrid_fake))
    sendgrid_fake.set_mode("400")
    ((job_id, _user),) = create_jobs(db_url, 1)
    async with running(settings, db_url) as sup:
        await until(all_status(db_url, [job_id], "completed"), what="completed")
        await until(lambda: bool(outbox(db_url, job_id)) and outbox(db_url, job_id)[0]["gave_up_at"] is not None,
                    what="mail given up")
        requests = sendgrid_fake.request_count
        sql(db_url, "UPDATE export_mail_outbox SET available_at = now()")
        assert await sup.parts.outbox.drain_once() == 0
        assert sendgrid_fake.request_count == requests
    (ob,) = outbox(db_url, job_id)
    assert "verified Sender Identity" in ob["last_error"] and ob["sent_at"] is None


def test_local_error_during_half_open_probe_does_not_close_breaker(
    tmp_path: Path, storage_fake: FakeSupabaseStorage
) -> None:
    """A permanent error raised before the store was asked (missing input file) proves nothing."""
    from supervisor.delivery.breaker import BreakerStorage, CircuitBreaker
    from supervisor.delivery.storage import StorageError

    breaker = CircuitBreaker(1, 0.2)
    inner = SupabaseStorage(storage_fake.url, KEY, BUCKET, timeout_seconds=5)
    store = BreakerStorage(inner, breaker)
    pdf = tmp_path / "x.pdf"
    pdf.write_bytes(TINY_PDF)
    try:
        storage_fake.fail(503)
        with pytest.raises(StorageError):
            store.put("u/j.pdf", pdf, "application/pdf")
        assert breaker.state == "open"
        time.sleep(0.25)
        assert str(breaker.state) == "half_open"
        with pytest.raises(StorageError) as info:
            store.put("u/j.pdf", tmp_path / "missing.pdf", "application/pdf")
        assert info.value.category == "permanent"
        state: str = breaker.state
        assert state != "closed"  # the store was never asked
        with pytest.raises(StorageError):
            store.put("u/j.pdf", pdf, "application/pdf")  # the real probe: still down
        assert breaker.state == "open"
    finally:
        inner.close()


async def test_unsent_mails_survive_a_restart_and_go_out_once(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage, sendgrid_fake: FakeSendGrid
) -> None:
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, sendgrid_fake))
    sendgrid_fake.set_mode("503")
    created = create_jobs(db_url, 3)
    ids = [j for j, _ in created]
    async with running(settings, db_url):
        await until(all_status(db_url, ids, "completed"), what="completed")
        await until(lambda: all(r["last_error"] for r in sql(
            db_url, "SELECT last_error FROM export_mail_outbox")) and len(sql(
            db_url, "SELECT 1 FROM export_mail_outbox")) == len(ids), what="mail failures recorded")
    sendgrid_fake.set_mode("ok")
    sql(db_url, "UPDATE export_mail_outbox SET available_at = now()")
    async with running(settings, db_url):
        await until(lambda: all(r["sent_at"] for r in sql(db_url, "SELECT sent_at FROM export_mail_outbox")),
                    what="sent after restart")
        await asyncio.sleep(0.3)
    for job_id, _user in created:
        assert len(sendgrid_mails_for(sendgrid_fake, job_id)) == 1
    assert len(sendgrid_fake.messages) == len(ids)
    assert all(u.x_upsert == "true" for u in storage_fake.uploads) and len(storage_fake.uploads) == len(ids)


async def test_superseded_failure_mail_is_not_sent_after_operator_retry_succeeds(
    tmp_path: Path, db_url: str, storage_fake: FakeSupabaseStorage, sendgrid_fake: FakeSendGrid
) -> None:
    """Mail was down when the job failed; an operator retried it and it completed: the
    user gets the one mail that is true now (completed), not a stale 'failed' one too."""
    settings = settings_for(tmp_path, db_url, **remote_env(storage_fake, sendgrid_fake))
    sendgrid_fake.set_mode("503")
    ((job_id, _user),) = create_jobs(db_url, 1)
    good_payload = sql(db_url, "SELECT payload FROM export_jobs WHERE id = %s", job_id)[0]["payload"]
    sql(db_url, "UPDATE export_jobs SET payload = '{\"source\": {\"kind\": \"nonsense\"}}' WHERE id = %s", job_id)
    async with running(settings, db_url) as sup:
        await until(all_status(db_url, [job_id], "failed"), what="failed")
        await until(lambda: bool(outbox(db_url, job_id)) and bool(outbox(db_url, job_id)[0]["last_error"]),
                    what="failure mail attempted")
        sql(db_url, "UPDATE export_jobs SET payload = %s WHERE id = %s", json.dumps(good_payload), job_id)
        assert await sup.parts.queue.retry_failed(job_id)
        await until(all_status(db_url, [job_id], "completed"), what="completed after operator retry")
        sendgrid_fake.set_mode("ok")
        sql(db_url, "UPDATE export_mail_outbox SET available_at = now()")
        sup.parts.outbox.wake.set()
        await until(lambda: all(r["sent_at"] or r["gave_up_at"] for r in outbox(db_url, job_id)), what="settled")
        await asyncio.sleep(0.3)
    mails = sendgrid_mails_for(sendgrid_fake, job_id)
    assert [m["custom_args"]["mail_kind"] for m in mails] == ["completed"], mails
