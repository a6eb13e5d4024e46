"""Claiming under concurrency: many claimers drain a big queue, each job exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supervisor.queue.database import open_pool
from supervisor.queue.jobs import Claim, JobQueue
from tests.conftest import html_payload, make_settings

pytestmark = pytest.mark.timeout(300)

JOBS = 5000
CLAIMERS = 8


async def test_eight_claimers_drain_5000_jobs_exactly_once(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO export_jobs (user_id, export_type, payload, priority, subscriber, created_at)
               SELECT gen_random_uuid(), CASE WHEN g %% 3 = 0 THEN 'image' ELSE 'pdf' END,
                      '{"source":{"kind":"html","html":"x"}}'::jsonb,
                      CASE WHEN g %% 2 = 0 THEN 100 ELSE 10 END, g %% 2 = 0,
                      now() - interval '1 hour' + g * interval '1 ms'
                 FROM generate_series(1, %s) AS g""",
            (JOBS,),
        )
        # The claim order came from created_at and priority (the insert trigger).
        assert conn.execute("SELECT count(*) FROM export_jobs WHERE claim_order = 0").fetchone() == (0,)
        assert conn.execute(
            """SELECT count(*) FROM export_jobs, export_queue_settings s
                WHERE abs(claim_order - (extract(epoch FROM created_at)
                                         - priority * s.priority_aging_seconds)) > 1e-3"""
        ).fetchone() == (0,)

    pool = await open_pool(db_url, settings, max_size=CLAIMERS + 2)
    claimed: list[tuple[str, str, int]] = []  # (job id, worker, attempt)
    try:
        queues = [JobQueue(pool, f"claimer-{i}", settings.retry) for i in range(CLAIMERS)]

        async def drain(q: JobQueue) -> int:
            done = 0
            while True:
                batch = await q.claim(10)
                if not batch:
                    if (await q.stats())["pending"] == 0:
                        return done
                    await asyncio.sleep(0)  # others hold the rest locked for a moment
                    continue
                assert len(batch) <= 10
                for c in batch:
                    claimed.append((c.job_id, c.worker_id, c.attempt))
                    await q.complete(
                        c,
                        storage_path=f"{c.job_id}.pdf",
                        file_url="u",
                        file_size_bytes=1,
                        content_type="application/pdf",
                        metadata={"by": c.worker_id},
                    )
                    done += 1

        counts = await asyncio.gather(*(drain(q) for q in queues))
    finally:
        await pool.close()

    ids = Counter(job_id for job_id, _, _ in claimed)
    assert len(ids) == JOBS, "some jobs were never claimed"
    assert ids.most_common(1)[0][1] == 1, "a job was claimed twice"
    assert {a for _, _, a in claimed} == {1}
    assert sum(counts) == JOBS
    assert sum(1 for c in counts if c > 0) >= 2, f"the work was not shared: {counts}"
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT status, count(*), count(DISTINCT worker_id), min(attempts), max(attempts) "
            "FROM export_jobs GROUP BY status"
        ).fetchall()
        assert len(rows) == 1
        status, n, _workers, lo, hi = rows[0]
        assert (status, n, lo, hi) == ("completed", JOBS, 1, 1)
        # Each row was completed by the worker that claimed it.
        mismatched = conn.execute(
            "SELECT count(*) FROM export_jobs WHERE metadata->>'by' IS DISTINCT FROM worker_id"
        ).fetchone()
        assert mismatched == (0,)


async def test_claim_takes_priority_then_age_and_respects_available_at(queue: JobQueue, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO export_jobs (user_id, export_type, payload, priority, created_at, available_at)
               VALUES (gen_random_uuid(), 'pdf', '{"source":{"kind":"html","html":"old free"}}', 10,
                       now() - interval '10 seconds', now()),
                      (gen_random_uuid(), 'pdf', '{"source":{"kind":"html","html":"new sub"}}', 100,
                       now() - interval '1 second', now()),
                      (gen_random_uuid(), 'pdf', '{"source":{"kind":"html","html":"older sub"}}', 100,
                       now() - interval '2 seconds', now()),
                      (gen_random_uuid(), 'pdf', '{"source":{"kind":"html","html":"backing off"}}', 100,
                       now() - interval '1 hour', now() + interval '1 hour')"""
        )
    claims = await queue.claim(10)
    assert [c.payload["source"]["html"] for c in claims] == ["older sub", "new sub", "old free"]
    assert await queue.claim(10) == []
    wait = await queue.next_available_in()
    assert wait is not None and 3500 < wait <= 3600
    stats = await queue.stats()
    assert stats["pending"] == 1 and stats["processing"] == 3


async def test_claim_zero_and_empty_queue(queue: JobQueue) -> None:
    assert await queue.claim(0) == []
    assert await queue.claim(5) == []
    assert await queue.next_available_in() is None
    stats: dict[str, Any] = await queue.stats()
    assert stats == {"pending": 0, "processing": 0, "oldest_pending_seconds": 0.0}


async def test_claim_returns_the_job(queue: JobQueue) -> None:
    job = await queue.create_job(
        user_id="6f1c1b7e-3b7a-4a53-9a57-0a7c51f3b001",
        export_type="image",
        payload=html_payload("<p>x</p>"),
        recipient="a@example.com",
    )
    [c] = await queue.claim(3)
    assert isinstance(c, Claim)
    assert (c.job_id, c.attempt, c.worker_id, c.export_type) == (str(job["id"]), 1, "test-worker", "image")
    assert c.payload == html_payload("<p>x</p>")
    assert c.max_attempts == 3 and c.attempt < c.max_attempts and c.waited_seconds >= 0
    row = await queue.get_job(c.job_id)
    assert row is not None and row["status"] == "processing" and row["worker_id"] == "test-worker"
    assert row["notify_email"] == "a@example.com"  # the outbox reads it from the row, not the claim
    assert row["started_at"] is not None and row["heartbeat_at"] is not None
