"""The stale rescue reads the workers table (issue 17, migration 0010): a claim made by a
previous process under the same WORKER_ID (a Railway replica restarted after a crash) is
returned at once, not after STALE_AFTER_SECONDS; the live process's claims are not."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from supervisor.queue.jobs import JobQueue
from supervisor.queue.workers import WorkerDetail, WorkerRegistry, WorkerSnapshot
from supervisor.runner import Supervisor
from tests.conftest import html_payload, make_settings

pytestmark = pytest.mark.timeout(300)

STALE_SECONDS = 600  # far away: only the restart can rescue within the test


def snapshot(registry: WorkerRegistry, **changes: Any) -> WorkerSnapshot:
    base = WorkerSnapshot(
        worker_id=registry.worker_id, host=registry.host, pid=registry.pid, version="0.1.0",
        started_at=registry.started_at, children_ready=2, children_busy=0, capacity=2,
        children_memory_bytes=0, container_memory_bytes=None, container_limit_bytes=None, claiming=True,
        not_claiming=None, canary_ok=True, breaker_state="closed", detail=WorkerDetail(),
    )
    return msgspec.structs.replace(base, **changes)


def registered_at(db_url: str, worker_id: str) -> datetime:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT registered_at FROM export_workers WHERE worker_id = %s", (worker_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def new_claim(queue: JobQueue) -> str:
    job = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    (claim,) = await queue.claim(1)
    assert claim.job_id == str(job["id"])
    return claim.job_id


async def test_a_claim_of_a_previous_process_is_rescued_at_once(
    pool: AsyncConnectionPool[Any], settings: Settings, db_url: str
) -> None:
    first = WorkerRegistry(pool, "railway-replica-1", forget_hours=24)
    assert await first.beat(snapshot(first))
    queue = JobQueue(pool, "railway-replica-1", settings.retry)
    orphan = await new_claim(queue)  # then the container is OOM-killed

    # Beats of the same process keep its registration; its own claims stay.
    since = registered_at(db_url, "railway-replica-1")
    assert await first.beat(snapshot(first, children_busy=1))
    assert registered_at(db_url, "railway-replica-1") == since
    assert await queue.rescue_stale(STALE_SECONDS) == []

    # The same WORKER_ID comes back as a new process: the old claim is rescued at once.
    second = WorkerRegistry(pool, "railway-replica-1", forget_hours=24)
    second.pid = first.pid + 1
    assert second.started_at > first.started_at
    assert await second.beat(snapshot(second))
    assert registered_at(db_url, "railway-replica-1") > since
    live = await new_claim(queue)  # the new process's own claim, after its row
    assert await queue.rescue_stale(STALE_SECONDS) == [(orphan, "pending")]
    with psycopg.connect(db_url) as conn:
        message, reason, status = conn.execute(
            "SELECT error_message, metadata ->> 'failure_reason', status FROM export_jobs WHERE id = %s",
            (orphan,)).fetchone() or ("", "", "")
        live_status = conn.execute("SELECT status FROM export_jobs WHERE id = %s", (live,)).fetchone()
    assert status == "pending" and reason == "stale"
    assert message.startswith("worker railway-replica-1 restarted as a new process during attempt 1"), message
    assert live_status == ("processing",)
    assert await queue.rescue_stale(STALE_SECONDS) == []


async def test_a_supervisor_writes_its_row_before_its_first_claim(tmp_path: Path, db_url: str) -> None:
    """What makes the rule exact: a process's claims start after its registration
    (supervisor/runner.py _register runs before the claim loop), on one clock."""
    from render_child.null_child import null_child_entry

    settings = make_settings(tmp_path, db_url, MAX_CONCURRENT_RENDERS="2", WORKER_ID="worker-x")
    queue_pool = AsyncConnectionPool(db_url, open=False)
    await queue_pool.open()
    try:
        job_ids = [str((await JobQueue(queue_pool, "creator", settings.retry).create_job(
            user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload()))["id"]) for _ in range(3)]
    finally:
        await queue_pool.close()
    sup = Supervisor(settings, db_url, child_target=null_child_entry, serve_http=False)
    task = asyncio.create_task(sup.run())
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for _ in range(600):
                done = conn.execute("SELECT count(*) FROM export_jobs WHERE status = 'completed'").fetchone()
                if done == (3,):
                    break
                await asyncio.sleep(0.05)
            rows = conn.execute(
                "SELECT j.started_at >= w.registered_at FROM export_jobs j JOIN export_workers w "
                "ON w.worker_id = 'worker-x' WHERE j.id = ANY(%s::uuid[])", (job_ids,)).fetchall()
    finally:
        sup.request_stop()
        assert await asyncio.wait_for(task, 60) == 0
    assert rows == [(True,)] * 3
