"""Fenced writes, retries with backoff, stale rescue, cancellation, release, mail outbox."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from supervisor.delivery.fence import FenceCheck
from supervisor.queue.jobs import Claim, ClaimLost, JobQueue, Queued, full_jitter_backoff_ms
from supervisor.queue.migrate import sync_queue_settings
from supervisor.queue.store import InvalidJob
from tests.conftest import html_payload, make_settings

pytestmark = pytest.mark.timeout(300)


def sql(db_url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def row(db_url: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(db_url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        found = cur.execute("SELECT * FROM export_jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    return found


def outbox(db_url: str, job_id: str) -> list[tuple[Any, ...]]:
    return sql(db_url, "SELECT kind, recipient FROM export_mail_outbox WHERE job_id = %s ORDER BY id", job_id)


async def new_job(q: JobQueue, **kw: Any) -> str:
    job = await q.create_job(
        user_id=kw.pop("user_id", str(uuid.uuid4())), export_type="pdf", payload=html_payload(), **kw
    )
    return str(job["id"])


async def claim_one(q: JobQueue) -> Claim:
    claims = await q.claim(1)
    assert len(claims) == 1
    return claims[0]


def make_stale(db_url: str, job_id: str, seconds: int = 600) -> None:
    sql(
        db_url,
        "UPDATE export_jobs SET heartbeat_at = now() - make_interval(secs => %s) WHERE id = %s",
        seconds,
        job_id,
    )


# ---- fencing -------------------------------------------------------------------------


async def test_completions_that_finish_together_share_a_statement_and_each_is_fenced(
    pool: AsyncConnectionPool[Any], settings: Settings, db_url: str
) -> None:
    """Group commit: ten completions at once take fewer statements than ten, and a lost
    claim among them raises ClaimLost for that one only (its row, mail and upload entry
    untouched) while the others complete with their mail queued."""
    a = JobQueue(pool, "worker-a", settings.retry)
    ids = [await new_job(a, recipient=f"u{i}@example.com") for i in range(10)]
    claims = await a.claim(10)
    assert sorted(c.job_id for c in claims) == sorted(ids)
    lost = claims[3]
    sql(db_url, "UPDATE export_jobs SET worker_id = 'worker-b' WHERE id = %s", lost.job_id)
    lost_before = row(db_url, lost.job_id)
    statements = 0
    run = a._completions._run  # count the statements the batches take

    async def counted(batch: Any) -> Any:
        nonlocal statements
        statements += 1
        return await run(batch)

    a._completions._run = counted
    results = await asyncio.gather(
        *(a.complete(c, storage_path=f"k/{c.job_id}", file_url="u", file_size_bytes=i + 1,
                     content_type="application/pdf", metadata={"n": i}) for i, c in enumerate(claims)),
        return_exceptions=True)
    assert statements < len(claims), statements
    # Each says which outboxes got a row (whom the settler wakes): mail, no webhook here.
    assert [r if isinstance(r, Queued) else type(r).__name__ for r in results] == \
        [Queued(mail=True, webhook=False)] * 3 + ["ClaimLost"] + [Queued(mail=True, webhook=False)] * 6
    assert row(db_url, lost.job_id) == lost_before
    assert outbox(db_url, lost.job_id) == []
    for i, c in enumerate(claims):
        if c is lost:
            continue
        done = row(db_url, c.job_id)
        assert (done["status"], done["storage_path"], done["file_size_bytes"]) == ("completed", f"k/{c.job_id}", i + 1)
        assert done["metadata"]["n"] == i
        assert outbox(db_url, c.job_id) == [("completed", f"u{ids.index(c.job_id)}@example.com")]



async def test_a_lost_claim_can_change_nothing(
    pool: AsyncConnectionPool[Any], settings: Settings, db_url: str
) -> None:
    a = JobQueue(pool, "worker-a", settings.retry)
    b = JobQueue(pool, "worker-b", settings.retry)
    job_id = await new_job(a, recipient="owner@example.com")
    old = await claim_one(a)
    assert await a.heartbeat([old]) == {job_id: False}
    make_stale(db_url, job_id)
    assert await b.rescue_stale(60) == [(job_id, "pending")]
    new = await claim_one(b)
    assert (new.job_id, new.attempt, new.worker_id) == (job_id, 2, "worker-b")

    before = row(db_url, job_id)
    assert await a.heartbeat([old]) == {}
    with pytest.raises(ClaimLost):
        await a.complete(
            old, storage_path="x", file_url="x", file_size_bytes=1, content_type="x", metadata={}
        )
    with pytest.raises(ClaimLost):
        await a.fail(old, "transient", "boom")
    with pytest.raises(ClaimLost):
        await a.fail(old, "permanent", "boom")
    with pytest.raises(ClaimLost):
        await a.release(old)
    with pytest.raises(ClaimLost):
        await a.defer(old, 1000, "storage down")
    with pytest.raises(ClaimLost):
        await a.settle_cancelled(old)
    assert row(db_url, job_id) == before
    assert outbox(db_url, job_id) == []
    # The same worker id with the old attempt number is fenced too (a re-claim by itself).
    stale_twin = Claim(**{**old.__dict__, "worker_id": "worker-b"})
    with pytest.raises(ClaimLost):
        await b.complete(
            stale_twin, storage_path="x", file_url="x", file_size_bytes=1, content_type="x", metadata={}
        )
    assert row(db_url, job_id) == before
    # The live claim still works.
    assert await b.heartbeat([new, old]) == {job_id: False}
    await b.complete(
        new,
        storage_path="p",
        file_url="u",
        file_size_bytes=3,
        content_type="application/pdf",
        metadata={"pages": 1},
    )
    done = row(db_url, job_id)
    assert (
        done["status"] == "completed" and done["worker_id"] == "worker-b" and done["metadata"] == {"pages": 1}
    )


# ---- retries -------------------------------------------------------------------------


def test_full_jitter_backoff() -> None:
    assert [full_jitter_backoff_ms(a, 1000, 5000, lambda: 1.0) for a in range(1, 7)] == [
        1000,
        2000,
        4000,
        5000,
        5000,
        5000,
    ]
    assert full_jitter_backoff_ms(0, 1000, 5000, lambda: 1.0) == 1000
    assert full_jitter_backoff_ms(3, 1000, 5000, lambda: 0.0) == 0
    assert full_jitter_backoff_ms(3, 1000, 5000, lambda: 0.5) == 2000
    assert full_jitter_backoff_ms(40, 1000, 300_000, lambda: 1.0) == 300_000
    import random

    rng = random.Random(7)
    values = [full_jitter_backoff_ms(3, 1000, 5000, rng.random) for _ in range(500)]
    assert all(0 <= v <= 4000 for v in values)
    assert min(values) < 500 and max(values) > 3500  # spread over the whole range


async def test_backoff_grows_and_is_capped(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    s = make_settings(
        tmp_path, db_url, RETRY_BACKOFF_BASE_MS="1000", RETRY_BACKOFF_CAP_MS="3000", MAX_ATTEMPTS="6"
    )
    sync_queue_settings(db_url, s)
    q = JobQueue(pool, "w", s.retry, rng=lambda: 1.0)
    job_id = await new_job(q)
    delays = []
    for attempt in range(1, 6):
        claim = await claim_one(q)
        assert claim.attempt == attempt
        outcome = await q.fail(claim, "transient" if attempt % 2 else "resource", f"try {attempt}")
        assert outcome.status == "pending"
        [(wait,)] = sql(
            db_url,
            # Measured from the failure's own now() (its error_history entry), not the clock at this
            # later read, which a busy machine can push arbitrarily far.
            "SELECT extract(epoch FROM available_at - (error_history -> -1 ->> 'at')::timestamptz)::float8"
            " FROM export_jobs WHERE id = %s",
            job_id,
        )
        delays.append(outcome.retry_in_ms)
        assert abs(wait - outcome.retry_in_ms / 1000) < 0.001
        assert await q.claim(1) == []  # not before the backoff
        sql(db_url, "UPDATE export_jobs SET available_at = now() WHERE id = %s", job_id)
    assert delays == [1000, 2000, 3000, 3000, 3000]
    last = await claim_one(q)
    assert last.attempt == last.max_attempts
    assert (await q.fail(last, "transient", "try 6")).status == "failed"
    final = row(db_url, job_id)
    assert final["status"] == "failed" and final["attempts"] == 6 and final["completed_at"] is not None
    assert [h["attempt"] for h in final["error_history"]] == [1, 2, 3, 4, 5, 6]
    assert [h["message"] for h in final["error_history"]][-1] == "try 6"


@pytest.mark.parametrize("category", ["permanent", "validation"])
async def test_permanent_and_validation_errors_never_retry(
    queue: JobQueue, db_url: str, category: str
) -> None:
    job_id = await new_job(queue, recipient="x@example.com")
    claim = await claim_one(queue)
    outcome = await queue.fail(claim, category, "bad input", {"stage": "render"})  # type: ignore[arg-type]
    assert outcome.status == "failed"
    r = row(db_url, job_id)
    assert (r["status"], r["attempts"], r["error_category"], r["error_message"]) == (
        "failed",
        1,
        category,
        "bad input",
    )
    assert r["metadata"] == {"stage": "render"} and len(r["error_history"]) == 1
    assert outbox(db_url, job_id) == [("failed", "x@example.com")]
    assert await queue.claim(1) == []


async def test_error_history_is_bounded_at_ten(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    s = make_settings(tmp_path, db_url, MAX_ATTEMPTS="15")
    sync_queue_settings(db_url, s)
    q = JobQueue(pool, "w", s.retry)
    job_id = await new_job(q)
    for attempt in range(1, 16):
        claim = await claim_one(q)
        outcome = await q.fail(claim, "transient", f"error {attempt}", retry_delay_ms=0)
        assert outcome.status == ("failed" if attempt == 15 else "pending")
        history = row(db_url, job_id)["error_history"]
        assert len(history) == min(attempt, 10)
        assert history[-1]["attempt"] == attempt and history[-1]["message"] == f"error {attempt}"
    final = row(db_url, job_id)
    assert final["status"] == "failed"
    assert [h["attempt"] for h in final["error_history"]] == list(range(6, 16))


# ---- stale rescue --------------------------------------------------------------------


async def test_stopped_heartbeat_returns_job_to_pending(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue)
    await claim_one(queue)
    assert await queue.rescue_stale(60) == []  # fresh heartbeat: left alone
    make_stale(db_url, job_id, 120)
    assert await queue.rescue_stale(60) == [(job_id, "pending")]
    r = row(db_url, job_id)
    assert r["status"] == "pending" and r["worker_id"] is None and r["heartbeat_at"] is None
    assert "stopped heartbeating" in r["error_message"] and "test-worker" in r["error_message"]
    assert r["error_category"] == "transient"
    assert r["error_history"][-1]["message"] == "stale claim rescued by test-worker"
    again = await claim_one(queue)
    assert again.attempt == 2


async def test_stale_claim_out_of_attempts_fails_and_queues_mail(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue, recipient="owner@example.com")
    sql(db_url, "UPDATE export_jobs SET max_attempts = 1 WHERE id = %s", job_id)
    await claim_one(queue)
    make_stale(db_url, job_id)
    assert await queue.rescue_stale(60) == [(job_id, "failed")]
    r = row(db_url, job_id)
    assert r["status"] == "failed" and r["completed_at"] is not None
    assert outbox(db_url, job_id) == [("failed", "owner@example.com")]
    # Without an address there is no mail row.
    other = await new_job(queue)
    sql(db_url, "UPDATE export_jobs SET max_attempts = 1 WHERE id = %s", other)
    await claim_one(queue)
    make_stale(db_url, other)
    assert await queue.rescue_stale(60) == [(other, "failed")]
    assert outbox(db_url, other) == []


async def test_job_completed_during_rescue_stays_completed(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue)
    claim = await claim_one(queue)
    make_stale(db_url, job_id)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        # The worker finishes just as the rescuer looks: its transaction holds the row.
        await conn.execute(
            "UPDATE export_jobs SET status = 'completed', completed_at = now() "
            "WHERE id = %s AND worker_id = %s AND attempts = %s AND status = 'processing'",
            (job_id, claim.worker_id, claim.attempt),
        )
        rescued = await asyncio.wait_for(queue.rescue_stale(60), 10)
        await conn.commit()
    assert rescued == []
    assert await queue.rescue_stale(60) == []
    r = row(db_url, job_id)
    assert r["status"] == "completed" and r["attempts"] == 1


async def test_rescue_is_safe_on_many_workers_at_once(
    pool: AsyncConnectionPool[Any], settings: Settings, db_url: str
) -> None:
    q = JobQueue(pool, "w", settings.retry)
    ids = []
    for _ in range(30):
        ids.append(await new_job(q))
    assert len(await q.claim(30)) == 30
    sql(db_url, "UPDATE export_jobs SET heartbeat_at = now() - interval '10 minutes'")
    rescuers = [JobQueue(pool, f"r{i}", settings.retry) for i in range(6)]
    results = await asyncio.gather(*(r.rescue_stale(60) for r in rescuers))
    flat = [job for res in results for job, _ in res]
    assert sorted(flat) == sorted(ids)
    assert sql(db_url, "SELECT status, count(*) FROM export_jobs GROUP BY status") == [("pending", 30)]


# ---- cancellation, release, completion ------------------------------------------------


async def test_cancel_pending_processing_and_final(queue: JobQueue, db_url: str) -> None:
    owner = str(uuid.uuid4())
    pending = await new_job(queue, user_id=owner)
    assert await queue.cancel(pending, user_id=str(uuid.uuid4())) is None  # someone else's job
    assert await queue.cancel(pending, user_id=owner) == "cancelled"
    r = row(db_url, pending)
    assert r["status"] == "cancelled" and r["completed_at"] is not None
    assert await queue.cancel(pending) is None  # already final

    running = await new_job(queue)
    claim = await claim_one(queue)
    assert claim.job_id == running
    assert await queue.heartbeat([claim]) == {running: False}
    assert await queue.cancel(running) == "processing"
    assert row(db_url, running)["status"] == "processing"
    assert await queue.heartbeat([claim]) == {running: True}
    await queue.settle_cancelled(claim)
    r = row(db_url, running)
    assert r["status"] == "cancelled" and r["error_message"] == "cancelled by request"
    assert await queue.cancel(running) is None
    assert await queue.cancel(str(uuid.uuid4())) is None
    # An operator can send a cancelled job back.
    assert await queue.retry_failed(running) is True
    r = row(db_url, running)
    # A fresh allowance; attempts keeps counting so the old claim stays fenced out.
    assert (r["status"], r["attempts"], r["max_attempts"], r["cancel_requested_at"]) == ("pending", 1, 4, None)
    assert await queue.retry_failed(running) is False
    again = await claim_one(queue)
    assert (again.job_id, again.attempt) == (running, 2)
    with pytest.raises(ClaimLost):
        await queue.settle_cancelled(claim)


async def test_release_gives_back_the_attempt_and_is_claimable_at_once(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue)
    claim = await claim_one(queue)
    r = row(db_url, job_id)
    assert (r["attempts"], r["max_attempts"]) == (1, 3)
    await queue.release(claim)
    r = row(db_url, job_id)
    # Not spent: attempts still counts claims, the allowance grew by one.
    assert (r["status"], r["attempts"], r["max_attempts"], r["worker_id"], r["started_at"]) == (
        "pending", 1, 4, None, None
    )
    again = await claim_one(queue)
    assert (again.job_id, again.attempt) == (job_id, 2)
    # The SAME worker re-claimed it: the first claim is still fenced out.
    with pytest.raises(ClaimLost):
        await queue.release(claim)
    assert await queue.heartbeat([claim]) == {}
    await queue.release(again)
    # Released and re-claimed by another worker: the earlier claims are fenced out.
    other = JobQueue(queue.pool, "other-worker", queue.retry)
    theirs = await claim_one(other)
    assert (theirs.job_id, theirs.attempt) == (job_id, 3)
    before = row(db_url, job_id)
    with pytest.raises(ClaimLost):
        await queue.release(claim)
    with pytest.raises(ClaimLost):
        await queue.complete(
            claim, storage_path="x", file_url="x", file_size_bytes=1, content_type="x", metadata={}
        )
    assert row(db_url, job_id) == before


async def test_defer_keeps_the_attempt_and_counts(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue)
    claim = await claim_one(queue)
    assert await queue.defer(claim, 60_000, "storage breaker open") == 1
    r = row(db_url, job_id)
    assert (r["status"], r["attempts"], r["max_attempts"], r["error_category"]) == ("pending", 1, 4, "transient")
    assert await queue.claim(1) == []
    sql(db_url, "UPDATE export_jobs SET available_at = now() WHERE id = %s", job_id)
    claim = await claim_one(queue)
    assert await queue.defer(claim, 0, "again") == 2


async def test_complete_writes_one_completed_mail(queue: JobQueue, db_url: str) -> None:
    job_id = await new_job(queue, recipient="owner@example.com")
    claim = await claim_one(queue)
    await queue.complete(
        claim,
        storage_path="u/x.pdf",
        file_url="https://f/x.pdf",
        file_size_bytes=42,
        content_type="application/pdf",
        metadata={"pages": 2},
    )
    with pytest.raises(ClaimLost):
        await queue.complete(
            claim,
            storage_path="u/x.pdf",
            file_url="https://f/x.pdf",
            file_size_bytes=42,
            content_type="application/pdf",
            metadata={"pages": 2},
        )
    assert outbox(db_url, job_id) == [("completed", "owner@example.com")]
    # The outbox insert itself is idempotent too.
    sql(
        db_url,
        "INSERT INTO export_mail_outbox (job_id, kind, recipient) VALUES (%s, 'completed', 'x@y.z') "
        "ON CONFLICT (job_id, kind) DO NOTHING",
        job_id,
    )
    assert outbox(db_url, job_id) == [("completed", "owner@example.com")]
    r = row(db_url, job_id)
    assert (r["status"], r["storage_path"], r["file_size_bytes"], r["content_type"]) == (
        "completed",
        "u/x.pdf",
        42,
        "application/pdf",
    )
    # No address: no mail.
    quiet = await new_job(queue)
    claim = await claim_one(queue)
    await queue.complete(
        claim, storage_path="q", file_url="q", file_size_bytes=1, content_type="image/png", metadata={}
    )
    assert outbox(db_url, quiet) == []


async def test_nul_character_in_payload_is_a_clear_validation_error(queue: JobQueue) -> None:
    """Found by schemathesis: jsonb cannot hold \\u0000; the caller gets InvalidJob, not a 500."""
    with pytest.raises(InvalidJob) as info:
        await queue.create_job(
            user_id="00000000-0000-4000-8000-000000000abc",
            export_type="pdf",
            payload={"source": {"kind": "html", "html": "a\u0000b"}},
        )
    assert info.value.field == "payload"


async def test_fence_check_batches_and_tells_held_cancelled_and_lost_apart(queue: JobQueue, db_url: str) -> None:
    """The pre-upload fence check: concurrent checks share heartbeats; each learns its own state."""
    held_id, cancel_id, lost_id = await new_job(queue), await new_job(queue), await new_job(queue)
    claims = {c.job_id: c for c in await queue.claim(3)}
    assert set(claims) == {held_id, cancel_id, lost_id}
    assert await queue.cancel(cancel_id) == "processing"
    make_stale(db_url, lost_id)
    await queue.rescue_stale(60)
    fence = FenceCheck(queue)
    results = await asyncio.gather(
        *(fence.check(claims[j], f"u/{j}/{claims[j].attempt}.pdf") for j in (held_id, cancel_id, lost_id)),
        return_exceptions=True,
    )
    assert results[0] is False
    assert results[1] is True
    assert isinstance(results[2], ClaimLost)
    # Only the claim that may upload has its key recorded for the orphan sweep.
    with psycopg.connect(db_url) as conn:
        keys = [r[0] for r in conn.execute("SELECT storage_key FROM export_uploads")]
    assert keys == [f"u/{held_id}/{claims[held_id].attempt}.pdf"]
