"""A poison job (one that always hits its time limit) cannot monopolise the pool.

Each render killed for time or memory is a strike: the job goes back in line behind
work that came after it (its claim order is recomputed with its backoff), and after
POISON_KILL_LIMIT strikes (2) it fails for good with category `resource`, however
many attempts it had left. Measured with real Chromium and 2 children: 30 normal
jobs of other users keep their p95 latency within 2x of a run without the poison job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import make_settings

from supervisor.queue import JobQueue
from supervisor.runner import Supervisor
from tests.chromium import chromium_binary

CHROMIUM = os.environ.get("PUPPETEER_EXECUTABLE_PATH", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.chromium,
    pytest.mark.skipif(chromium_binary(CHROMIUM) is None, reason="no Chromium for PUPPETEER_EXECUTABLE_PATH"),
]

NORMAL_JOBS = 30
ENV = {
    "MAX_CONCURRENT_RENDERS": "2",
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


async def _run(tmp_path: Path, db_url: str, with_poison: bool) -> tuple[list[float], dict[str, Any] | None]:
    settings = make_settings(tmp_path, db_url, **ENV)
    sup = Supervisor(settings, db_url, serve_http=False)
    task = asyncio.create_task(sup.run())
    try:
        await asyncio.wait_for(sup.started.wait(), 60)
        while len(sup.pool.idle_children()) < 2:
            await asyncio.sleep(0.05)
        queue: JobQueue = sup.queue
        poison_id = None
        if with_poison:
            poison = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf",
                                            payload={"source": {"kind": "test-template", "name": "busy-loop"}})
            poison_id = str(poison["id"])
            await asyncio.sleep(0.2)  # it is claimed first, as in the reported incident
        ids = []
        for _ in range(NORMAL_JOBS):
            row = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf",
                                         payload={"source": {"kind": "html", "html": NORMAL_HTML}})
            ids.append(str(row["id"]))
        wanted = [*ids, *([poison_id] if poison_id else [])]
        while True:
            with psycopg.connect(db_url) as conn:
                rows = conn.execute(
                    "SELECT id::text, status, extract(epoch FROM completed_at - created_at)::float8 "
                    "FROM export_jobs WHERE id = ANY(%s::uuid[])", (wanted,)).fetchall()
            if all(r[1] in ("completed", "failed") for r in rows) and len(rows) == len(wanted):
                break
            await asyncio.sleep(0.1)
        latencies = [r[2] for r in rows if r[0] != poison_id]
        assert all(r[1] == "completed" for r in rows if r[0] != poison_id)
        poison_row = None
        if poison_id:
            with psycopg.connect(db_url) as conn:
                cur = conn.cursor(row_factory=psycopg.rows.dict_row)
                poison_row = cur.execute("SELECT * FROM export_jobs WHERE id = %s", (poison_id,)).fetchone()
        return latencies, poison_row
    finally:
        sup.request_stop(fast=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


async def test_a_poison_job_is_contained_and_failed_for_good(tmp_path: Path, db_url: str, template_db: str) -> None:
    # Each case twice, alternating, and the better p95 of each: the machine's own load swings.
    p95s: dict[bool, list[float]] = {False: [], True: []}
    poison: dict[str, Any] | None = None
    for round_ in range(2):
        for with_poison in (False, True):
            latencies, row = await _run(tmp_path / f"{with_poison}-{round_}", db_url, with_poison=with_poison)
            p95s[with_poison].append(_p95(latencies))
            poison = row or poison
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("DELETE FROM export_mail_outbox; DELETE FROM export_jobs")

    assert poison is not None
    assert poison["status"] == "failed"
    assert poison["error_category"] == "resource"
    assert poison["metadata"]["child_kills"] == 2  # POISON_KILL_LIMIT, although 3 attempts were left
    assert poison["attempts"] == 2
    assert poison["metadata"]["failure_reason"] == "timeout"
    assert "JOB_TIMEOUT_SECONDS" in poison["error_message"]

    alone, beside = min(p95s[False]), min(p95s[True])
    ratio = beside / alone
    print(f"normal jobs p95: {alone:.2f}s alone, {beside:.2f}s beside a poison job (ratio {ratio:.2f}); runs {p95s}")
    assert ratio <= 2.0, p95s
