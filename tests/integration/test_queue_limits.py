"""create_export_job: atomic per-user limits, idempotency, validation (DESIGN.md section 3)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from supervisor.queue.database import open_pool
from supervisor.queue.jobs import JobQueue
from supervisor.queue.migrate import sync_queue_settings
from supervisor.queue.store import InvalidJob, LimitExceeded
from tests.conftest import html_payload, make_settings

pytestmark = pytest.mark.timeout(300)

CALLS = 50


@pytest.fixture
async def wide_pool(db_url: str, settings: Settings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p = await open_pool(db_url, settings, max_size=20)
    yield p
    await p.close()


async def _storm(
    q: JobQueue, user: str, *, subscriber: bool = False
) -> tuple[list[dict[str, Any]], list[BaseException]]:
    results = await asyncio.gather(
        *(
            q.create_job(
                user_id=user, export_type="pdf", payload=html_payload(f"<p>{i}</p>"), subscriber=subscriber
            )
            for i in range(CALLS)
        ),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, dict)]
    errors = [r for r in results if isinstance(r, BaseException)]
    return ok, errors


def _rows(db_url: str, user: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM export_jobs WHERE user_id = %s", (user,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_concurrent_free_user_creations_stop_at_pending_limit(
    wide_pool: AsyncConnectionPool[Any], settings: Settings, db_url: str
) -> None:
    q = JobQueue(wide_pool, "w", settings.retry)
    user = str(uuid.uuid4())
    ok, errors = await _storm(q, user)
    assert settings.limits.free_user_pending_limit == 5
    assert len(ok) == 5
    assert len(errors) == CALLS - 5
    for e in errors:
        assert isinstance(e, LimitExceeded), repr(e)
        assert e.limit == "free_user_pending_limit" and e.maximum == 5 and e.retry_after_seconds > 0
    assert _rows(db_url, user) == 5
    assert {j["priority"] for j in ok} == {10}
    # Another user is not affected.
    await q.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())


async def test_concurrent_subscriber_creations_stop_at_subscriber_pending_limit(
    wide_pool: AsyncConnectionPool[Any], settings: Settings, db_url: str
) -> None:
    q = JobQueue(wide_pool, "w", settings.retry)
    user = str(uuid.uuid4())
    ok, errors = await _storm(q, user, subscriber=True)
    assert settings.limits.subscriber_pending_limit == 20
    assert len(ok) == 20
    assert all(
        isinstance(e, LimitExceeded) and e.limit == "subscriber_pending_limit" and e.maximum == 20
        for e in errors
    ), errors
    assert {j["priority"] for j in ok} == {100} and all(j["subscriber"] for j in ok)
    assert _rows(db_url, user) == 20


async def test_concurrent_creations_stop_at_hourly_limit(db_url: str, tmp_path: Path) -> None:
    s = make_settings(
        tmp_path,
        db_url,
        FREE_USER_PENDING_LIMIT="1000",
        SUBSCRIBER_PENDING_LIMIT="1000",
        SUBSCRIBER_HOURLY_LIMIT="30",
    )
    sync_queue_settings(db_url, s)
    pool = await open_pool(db_url, s, max_size=20)
    try:
        q = JobQueue(pool, "w", s.retry)
        free, sub = str(uuid.uuid4()), str(uuid.uuid4())
        ok, errors = await _storm(q, free)
        assert len(ok) == s.limits.free_user_hourly_limit == 10
        assert len(errors) == CALLS - 10
        for e in errors:
            assert isinstance(e, LimitExceeded), repr(e)
            assert e.limit == "free_user_hourly_limit" and e.maximum == 10
            assert 0 < e.retry_after_seconds <= 3600
            assert "hourly limit" in e.message
        ok, errors = await _storm(q, sub, subscriber=True)
        assert len(ok) == 30
        assert all(isinstance(e, LimitExceeded) and e.limit == "subscriber_hourly_limit" for e in errors)
        assert _rows(db_url, free) == 10 and _rows(db_url, sub) == 30
    finally:
        await pool.close()


async def test_hourly_limit_counts_finished_jobs_and_retry_after_tracks_the_oldest(
    queue: JobQueue, db_url: str
) -> None:
    """Finishing jobs frees the pending limit but not the hourly one; retry_after is when
    the oldest counted job leaves the 60-minute window."""
    user = str(uuid.uuid4())
    with psycopg.connect(db_url, autocommit=True) as conn:
        # 10 finished jobs created 50 minutes ago and later: the window frees up in ~10 minutes.
        conn.execute(
            """INSERT INTO export_jobs (user_id, export_type, payload, status, created_at)
               SELECT %s, 'pdf', '{"source":{"kind":"html","html":"x"}}', 'completed',
                      now() - interval '50 minutes' + g * interval '1 minute'
                 FROM generate_series(0, 9) AS g""",
            (user,),
        )
    with pytest.raises(LimitExceeded) as info:
        await queue.create_job(user_id=user, export_type="pdf", payload=html_payload())
    assert info.value.limit == "free_user_hourly_limit"
    assert 590 <= info.value.retry_after_seconds <= 601
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_jobs SET created_at = created_at - interval '11 minutes' "
            "WHERE user_id = %s AND created_at < now() - interval '49 minutes'",
            (user,),
        )
    await queue.create_job(user_id=user, export_type="pdf", payload=html_payload())


async def test_pending_limit_frees_up_when_a_job_finishes(queue: JobQueue) -> None:
    user = str(uuid.uuid4())
    for i in range(5):
        await queue.create_job(user_id=user, export_type="pdf", payload=html_payload(str(i)))
    with pytest.raises(LimitExceeded):
        await queue.create_job(user_id=user, export_type="pdf", payload=html_payload())
    [claim] = await queue.claim(1)
    await queue.complete(
        claim, storage_path="p", file_url="u", file_size_bytes=1, content_type="application/pdf", metadata={}
    )
    await queue.create_job(user_id=user, export_type="pdf", payload=html_payload())


async def test_idempotency_key_returns_the_same_job_and_uses_no_quota(queue: JobQueue, db_url: str) -> None:
    user = str(uuid.uuid4())
    for i in range(4):  # limit - 1
        await queue.create_job(user_id=user, export_type="pdf", payload=html_payload(str(i)))
    first = await queue.create_job(
        user_id=user, export_type="pdf", payload=html_payload(), idempotency_key="k-1"
    )
    assert _rows(db_url, user) == 5  # at the limit now
    for _ in range(5):
        again = await queue.create_job(
            user_id=user, export_type="pdf", payload=html_payload(), idempotency_key="k-1"
        )
        assert again["id"] == first["id"]
    assert _rows(db_url, user) == 5
    with pytest.raises(LimitExceeded):
        await queue.create_job(user_id=user, export_type="pdf", payload=html_payload(), idempotency_key="k-2")
    # The same key for another user is another job.
    other = await queue.create_job(
        user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload(), idempotency_key="k-1"
    )
    assert other["id"] != first["id"]


async def test_concurrent_repeats_of_one_key_make_one_job(
    wide_pool: AsyncConnectionPool[Any], settings: Settings, db_url: str
) -> None:
    q = JobQueue(wide_pool, "w", settings.retry)
    user = str(uuid.uuid4())
    jobs = await asyncio.gather(
        *(
            q.create_job(user_id=user, export_type="pdf", payload=html_payload(), idempotency_key="same")
            for _ in range(30)
        )
    )
    assert len({j["id"] for j in jobs}) == 1
    assert _rows(db_url, user) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"export_type": "docx"}, "export_type"),
        ({"export_type": ""}, "export_type"),
        ({"user_id": "not-a-uuid"}, "user_id"),
        ({"menu_id": "nope"}, "menu_id"),
        ({"payload": {"source": {"kind": "ftp"}}}, "payload.source.kind"),
        ({"payload": {"nothing": 1}}, "payload.source.kind"),
        ({"payload": {"source": {}}}, "payload.source.kind"),
        ({"payload": {"source": "html"}}, "payload.source.kind"),
        ({"payload": {"source": {"kind": None}}}, "payload.source.kind"),
        ({"recipient": "not an address"}, "email"),  # the SQL names the API's field
        ({"idempotency_key": "x" * 201}, "idempotency_key"),
        ({"payload": {"source": {"kind": "html", "html": "x" * 3_000_000}}}, "payload"),
    ],
)
async def test_validation(queue: JobQueue, db_url: str, kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"user_id": str(uuid.uuid4()), "export_type": "pdf", "payload": html_payload()}
    args.update(kwargs)
    with pytest.raises(InvalidJob) as info:
        await queue.create_job(**args)
    assert info.value.field == field
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (0,)


async def test_creation_function_is_callable_directly_like_a_supabase_rpc(
    db_url: str, settings: Settings
) -> None:
    user = str(uuid.uuid4())
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("LISTEN export_jobs_available")
        row = conn.execute(
            "SELECT id, status, priority, max_attempts "
            "FROM create_export_job(%s, 'image', %s::jsonb, p_subscriber => true)",
            (user, '{"source": {"kind": "html", "html": "x"}}'),
        ).fetchone()
        assert row is not None and row[1:] == ("pending", 100, 3)
        notes = list(conn.notifies(timeout=2, stop_after=1))
        assert [n.channel for n in notes] == ["export_jobs_available"]
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT create_export_job(%s, 'gif', '{}'::jsonb)", (user,))
        assert info.value.diag.sqlstate == "EW422"
