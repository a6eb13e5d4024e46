"""export_jobs_created_total counts jobs created by any path, not only this worker's HTTP API."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from shared.config import Settings
from supervisor.http.app import AppState, build_app
from supervisor.http.health import CallbackHealthSources, HealthCheck, breaker_check, memory_check
from supervisor.queue.jobs import JobQueue
from supervisor.telemetry.metrics import Metrics

pytestmark = pytest.mark.timeout(300)

SAMPLE = re.compile(r'^export_jobs_created_total\{export_type="(\w+)"\} ([0-9.e+]+)$', re.M)


async def scrape(state: AppState) -> dict[str, float]:
    state._stats_at = float("-inf")  # the once-a-second throttle would hide the second scrape
    transport = httpx.ASGITransport(app=build_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    return {export_type: float(value) for export_type, value in SAMPLE.findall(r.text)}


def create_through_sql(db_url: str, export_type: str, count: int) -> None:
    """As the web app's RPC does: the SQL function, from another connection (no worker involved)."""
    payload = json.dumps({"source": {"kind": "html", "html": "<h1>rpc</h1>"}})
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(count):
            conn.execute(
                "SELECT id FROM create_export_job(%s::uuid, %s, %s::jsonb, p_subscriber => true)",
                (str(uuid.uuid4()), export_type, payload),
            )


async def test_jobs_created_by_the_sql_function_raise_the_metric(
    settings: Settings, queue: JobQueue, pool: Any, db_url: str
) -> None:
    sources = CallbackHealthSources(
        pool,
        storage_fn=lambda: breaker_check("closed", backend="local"),
        render_pool_fn=lambda: HealthCheck(True, "Puppeteer OK", {"ready_children": 1}),
        memory_fn=lambda: memory_check(0.1, 0.95),
    )
    state = AppState(settings=settings, queue=queue, metrics=Metrics(), listener=None, storage=None,
                     link_signer=None, files_root=None, health=sources)
    before = await scrape(state)
    create_through_sql(db_url, "pdf", 3)
    create_through_sql(db_url, "image", 2)
    after = await scrape(state)
    assert after.get("pdf", 0) - before.get("pdf", 0) == 3, (before, after)
    assert after.get("image", 0) - before.get("image", 0) == 2, (before, after)

    # A direct INSERT (the seed's own SQL does this) counts too, and deleting
    # rows (retention) does not lower the count.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO export_jobs (user_id, export_type, payload) VALUES (%s, 'pdf', %s::jsonb)",
            (str(uuid.uuid4()), json.dumps({"source": {"kind": "html", "html": "<p>x</p>"}})),
        )
        conn.execute("DELETE FROM export_jobs")
    final = await scrape(state)
    assert final["pdf"] - after["pdf"] == 1, (after, final)
    assert final["image"] == after["image"]


async def test_jobs_through_this_workers_api_are_not_counted_twice(
    settings: Settings, queue: JobQueue, pool: Any
) -> None:
    metrics = Metrics()
    state = AppState(settings=settings, queue=queue, metrics=metrics, listener=None, storage=None,
                     link_signer=None, files_root=None,
                     health=CallbackHealthSources(pool, storage_fn=lambda: breaker_check("closed", backend="local"),
                                                  render_pool_fn=lambda: HealthCheck(True, "ok", {}),
                                                  memory_fn=lambda: memory_check(0.1, 0.95)))
    base = (await scrape(state)).get("pdf", 0)
    await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf",
                           payload={"source": {"kind": "html", "html": "<p>api</p>"}}, subscriber=True)
    metrics.jobs_created.labels("pdf").inc()  # what the HTTP API does after creating one
    assert (await scrape(state))["pdf"] == base + 1
