"""Starvation: a free user's job is not starved by a stream of subscriber jobs.

The rule (ageing, not reserved capacity): every job gets a fixed claim order when it
is created,

    claim_order = epoch(created_at) - priority * priority_aging_seconds

and claiming takes the lowest claim order first. Waiting `priority_aging_seconds`
is worth one priority point, so a free job (priority 10) created at T is claimed
before every subscriber job (priority 100) created later than
T + (100 - 10) * priority_aging_seconds, however many of those keep arriving.
With priority_aging_seconds = 0.05 that bound is 4.5 s. Because the order is a
per-row constant, the claim walks one partial index; nothing is re-scored.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from supervisor.queue.jobs import JobQueue
from supervisor.queue.migrate import sync_queue_settings
from tests.conftest import html_payload, make_settings

pytestmark = pytest.mark.timeout(300)

AGING = 0.05
BOUND = (100 - 10) * AGING  # 4.5 s


@pytest.fixture
def aged_queue(pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path) -> JobQueue:
    s = make_settings(
        tmp_path,
        db_url,
        PRIORITY_AGING_SECONDS=str(AGING),
        SUBSCRIBER_PENDING_LIMIT="100000",
        SUBSCRIBER_HOURLY_LIMIT="100000",
    )
    sync_queue_settings(db_url, s)
    return JobQueue(pool, "w", s.retry)


_BASE: dict[int, Any] = {}


def _insert(conn: psycopg.Connection[Any], offset: float, priority: int) -> str:
    """A job created `offset` seconds after the base time T (one hour ago, fixed per connection)."""
    if id(conn) not in _BASE:
        found = conn.execute("SELECT now() - interval '1 hour'").fetchone()
        assert found is not None
        _BASE[id(conn)] = found[0]
    created_at = _BASE[id(conn)] + timedelta(seconds=offset)
    row = conn.execute(
        """INSERT INTO export_jobs (user_id, export_type, payload, priority, subscriber, created_at)
           VALUES (gen_random_uuid(), 'pdf', '{"source":{"kind":"html","html":"x"}}', %s, %s,
                   %s)
           RETURNING id""",
        (priority, priority == 100, created_at),
    ).fetchone()
    assert row is not None
    return str(row[0])


async def test_creation_function_sets_the_claim_order(aged_queue: JobQueue, db_url: str) -> None:
    free = await aged_queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    sub = await aged_queue.create_job(
        user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload(), subscriber=True
    )
    for job, priority in ((free, 10), (sub, 100)):
        assert job["priority"] == priority
        assert job["claim_order"] == pytest.approx(job["created_at"].timestamp() - priority * AGING, abs=1e-3)


async def test_free_job_is_claimed_before_subscribers_created_after_the_bound(
    aged_queue: JobQueue, db_url: str
) -> None:
    offsets: dict[str, float] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        free_id = _insert(conn, 0.0, 10)
        offsets[free_id] = 0.0
        # Subscriber jobs arrive every 0.25 s from T+0.125 to T+10.
        for i in range(40):
            offset = 0.125 + 0.25 * i
            offsets[_insert(conn, offset, 100)] = offset
    order = []
    while claims := await aged_queue.claim(1):
        order.append(claims[0].job_id)
    assert len(order) == 41
    position = order.index(free_id)
    before = [offsets[j] for j in order[:position]]
    after = [offsets[j] for j in order[position + 1 :]]
    assert before and all(o < BOUND for o in before)
    assert after and all(o > BOUND for o in after)


async def test_free_job_survives_a_continuous_stream(aged_queue: JobQueue, db_url: str) -> None:
    """Two subscriber jobs arrive for every one claimed, so the backlog only grows;
    the free job still comes out, and before any subscriber job newer than the bound."""
    created: dict[str, float] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        free_id = _insert(conn, 0.0, 10)
        step = 0
        claimed_free_at = None
        claimed: list[str] = []
        while claimed_free_at is None:
            for _ in range(2):
                step += 1
                created[_insert(conn, 0.2 * step, 100)] = 0.2 * step
            [claim] = await aged_queue.claim(1)
            claimed.append(claim.job_id)
            if claim.job_id == free_id:
                claimed_free_at = step
            assert step < 200, "the free job starved"
    assert all(created[j] < BOUND for j in claimed[:-1])
    # Subscriber jobs still waiting include ones newer than the bound: the free job beat them.
    assert any(o > BOUND for j, o in created.items() if j not in claimed)
