"""A poison job (one that always hits its time limit) cannot monopolise the pool.

Each render killed for time or memory is a strike: the job goes back in line behind
work that came after it (its claim order is recomputed with its backoff), and after
POISON_KILL_LIMIT strikes (2) it fails for good with category `resource`, however
many attempts it had left. With real Chromium and 2 children, beside 30 normal jobs of
other users. Their latency beside it is a benchmark goal (bench/poison.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from conftest import make_settings

from supervisor.queue.jobs import JobQueue
from supervisor.runner import Supervisor
from tests.chromium import chromium_binary

CHROMIUM = os.environ.get("PUPPETEER_EXECUTABLE_PATH", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.chromium,
    pytest.mark.skipif(chromium_binary(CHROMIUM) is None, reason="no Chromium for PUPPETEER_EXECUTABLE_PATH"),
]

NORMAL_JOBS = 30
ENV = {
    "MAX_CONCURRENT_RENDERS": "2",
    "SLOTS_PER_CHILD": "1",  # two children of one job each: these tests are about a child's life
    "ALLOW_TEST_TEMPLATES": "true",
    "JOB_TIMEOUT_SECONDS": "3",  # normal pages take ~0.3 s: far from it even on a loaded machine
    "MAX_ATTEMPTS": "5",
    "RETRY_BACKOFF_BASE_MS": "200",
    "RETRY_BACKOFF_CAP_MS": "400",
    "POLLING_INTERVAL_BUSY_MS": "50",
    "POLLING_INTERVAL_IDLE_MS": "200",
    "WATCHDOG_INTERVAL_MS": "100",
    "HEARTBEAT_INTERVAL_SECONDS": "1",
    "PUPPETEER_EXECUTABLE_PATH": CHROMIUM,
}
NORMAL_HTML = "<h1>Lunch</h1>" + "<p>Soup of the day, bread, butter</p>" * 1500


async def test_a_poison_job_is_contained_and_failed_for_good(tmp_path: Path, db_url: str) -> None:
    """Struck out after POISON_KILL_LIMIT kills, and each strike sends it behind the work created before it.

    How much the poison job slows normal work (their p95 within 2x) is a benchmark goal
    (`export-worker bench`, bench/poison.py), not a test.
    """
    settings = make_settings(tmp_path, db_url, **ENV)
    sup = Supervisor(settings, db_url, serve_http=False)
    task = asyncio.create_task(sup.run())
    try:
        await asyncio.wait_for(sup.started.wait(), 120)
        while len(sup.parts.pool.idle_children()) < 2:
            await asyncio.sleep(0.05)
        queue: JobQueue = sup.parts.queue
        poison = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf",
                                        payload={"source": {"kind": "test-template", "name": "busy-loop"}})
        poison_id = str(poison["id"])
        while (await queue.get_job(poison_id) or {}).get("status") == "pending":
            await asyncio.sleep(0.05)  # it is claimed first, as in the reported incident
        ids = [str((await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf",
                                           payload={"source": {"kind": "html", "html": NORMAL_HTML}}))["id"])
               for _ in range(NORMAL_JOBS)]
        wanted = [*ids, poison_id]
        while True:
            with psycopg.connect(db_url) as conn:
                done = conn.execute("SELECT count(*) FROM export_jobs WHERE id = ANY(%s::uuid[])"
                                    " AND status IN ('completed', 'failed')", (wanted,)).fetchone()
            if done == (len(wanted),):
                break
            await asyncio.sleep(0.1)
        with psycopg.connect(db_url) as conn:
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            rows = {str(r["id"]): r for r in cur.execute(
                "SELECT id, status, attempts, started_at, created_at, error_category, error_message, metadata,"
                " error_history FROM export_jobs WHERE id = ANY(%s::uuid[])", (wanted,))}
    finally:
        sup.request_stop(fast=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)

    poison_row = rows.pop(poison_id)
    assert all(r["status"] == "completed" for r in rows.values()), rows
    assert poison_row["status"] == "failed"
    assert poison_row["error_category"] == "resource"
    assert poison_row["metadata"]["child_kills"] == 2  # POISON_KILL_LIMIT, although 3 attempts were left
    assert poison_row["attempts"] == 2
    assert poison_row["metadata"]["failure_reason"] == "timeout"
    assert "JOB_TIMEOUT_SECONDS" in poison_row["error_message"]
    # Back in line behind the work that came after it: every normal job created before its
    # first strike was claimed before its second claim (started_at is the last claim's).
    struck_at = datetime.fromisoformat(poison_row["error_history"][0]["at"])
    # A normal job with a failed attempt of its own (past the 3 s deadline on a loaded machine)
    # was claimed again by its retry, whose time started_at holds: only first claims count.
    before_strike = [r for r in rows.values() if r["created_at"] < struck_at and not r["error_history"]]
    assert before_strike, "no normal job was waiting when the poison job was struck"
    late = [r["started_at"] for r in before_strike if r["started_at"] > poison_row["started_at"]]
    assert not late, f"{len(late)} earlier jobs were claimed after the poison job's second claim"
