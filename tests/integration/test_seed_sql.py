"""The seed README's troubleshooting and maintenance SQL runs unchanged against our schema.

Each snippet is copied verbatim from /work/shared/seed/README.md.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from supervisor.queue.jobs import JobQueue
from tests.conftest import html_payload

pytestmark = pytest.mark.timeout(300)

STALE_RESET = """UPDATE export_jobs
  SET status = 'pending', worker_id = NULL, started_at = NULL
  WHERE status = 'processing'
  AND (NOW() - started_at) > INTERVAL '5 minutes';"""

CLEANUP = """-- Delete completed jobs older than 30 days
DELETE FROM export_jobs
WHERE status = 'completed'
AND created_at < NOW() - INTERVAL '30 days';

-- Delete failed jobs older than 7 days
DELETE FROM export_jobs
WHERE status = 'failed'
AND created_at < NOW() - INTERVAL '7 days';"""

REINDEX = """-- Reindex export_jobs table
REINDEX TABLE export_jobs;

-- Analyze table for query planner
ANALYZE export_jobs;"""

SLOW_QUERIES = """-- Find slow job queries
SELECT query, mean_exec_time, calls
FROM pg_stat_statements
WHERE query LIKE '%export_jobs%'
ORDER BY mean_exec_time DESC
LIMIT 10;"""

REALTIME = """ALTER PUBLICATION supabase_realtime ADD TABLE export_jobs;"""

POLICIES = """SELECT * FROM pg_policies WHERE tablename = 'export_jobs';"""


def run(db_url: str, text: str) -> Any:
    """Run a snippet as psql would (several statements in one simple-query string)."""
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(text.encode())  # bytes: no parameter parsing of '%'
        return cur.fetchall() if cur.description else cur.rowcount


def _insert(db_url: str, status: str, age: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """INSERT INTO export_jobs (user_id, export_type, payload, status, created_at, completed_at)
               VALUES (gen_random_uuid(), 'pdf', '{"source":{"kind":"html","html":"x"}}', %s,
                       now() - %s::interval,
                       CASE WHEN %s IN ('completed', 'failed') THEN now() - %s::interval END)
               RETURNING id""",
            (status, age, status, age),
        ).fetchone()
    assert row is not None
    return str(row[0])


async def test_manual_stale_reset_makes_the_job_claimable(queue: JobQueue, db_url: str) -> None:
    job = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    [claim] = await queue.claim(1)
    fresh = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    other = JobQueue(queue.pool, "other", queue.retry)
    [fresh_claim] = await other.claim(1)
    assert fresh_claim.job_id == str(fresh["id"])
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_jobs SET started_at = now() - interval '6 minutes' WHERE id = %s", (job["id"],)
        )
    assert run(db_url, STALE_RESET) == 1  # only the old claim
    reclaimed = await queue.claim(5)
    assert [c.job_id for c in reclaimed] == [str(job["id"])]
    assert reclaimed[0].attempt == 2
    # The original claim is fenced out by the new attempt.
    assert await queue.heartbeat([claim]) == {}
    assert await queue.heartbeat([reclaimed[0]]) == {str(job["id"]): False}


def test_cleanup_deletes(db_url: str) -> None:
    old_done = _insert(db_url, "completed", "31 days")
    new_done = _insert(db_url, "completed", "29 days")
    old_failed = _insert(db_url, "failed", "8 days")
    new_failed = _insert(db_url, "failed", "6 days")
    old_pending = _insert(db_url, "pending", "60 days")
    run(db_url, CLEANUP)
    with psycopg.connect(db_url) as conn:
        left = {str(r[0]) for r in conn.execute("SELECT id FROM export_jobs")}
    assert left == {new_done, new_failed, old_pending}
    assert old_done not in left and old_failed not in left


def test_reindex_and_analyze(db_url: str) -> None:
    _insert(db_url, "pending", "1 minute")
    run(db_url, REINDEX)


def test_policies_query(db_url: str) -> None:
    assert run(db_url, POLICIES) == []  # no Supabase here: no policies, but the query works


def test_realtime_publication(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION supabase_realtime")
    run(db_url, REALTIME)
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
        ).fetchall() == [("export_jobs",)]


def test_slow_query_report(db_url: str) -> None:
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT count(*) FROM pg_stat_statements")
    except psycopg.Error as exc:
        pytest.skip(f"pg_stat_statements is not usable on this server: {exc.diag.message_primary or exc}")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM export_jobs").fetchone()
    rows = run(db_url, SLOW_QUERIES)
    assert isinstance(rows, list)
