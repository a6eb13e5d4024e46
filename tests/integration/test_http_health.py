"""/health in the seed's shape, /metrics, and a real uvicorn server over TCP."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from supervisor.http.app import AppState, build_app, make_server
from supervisor.http.health import (
    CallbackHealthSources,
    HealthCheck,
    breaker_check,
    database_check,
    health_report,
    memory_check,
)
from supervisor.queue.jobs import JobQueue
from supervisor.telemetry.metrics import Metrics

pytestmark = pytest.mark.timeout(300)

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SEED_METRICS = (
    "export_jobs_created_total",
    "export_jobs_completed_total",
    "export_jobs_failed_total",
    "export_job_duration_seconds",
    "export_queue_depth",
    "export_active_renders",
)
USER = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"


def state_for(settings: Settings, queue: JobQueue, sources: CallbackHealthSources) -> AppState:
    return AppState(
        settings=settings,
        queue=queue,
        metrics=Metrics(),
        listener=None,
        storage=None,
        link_signer=None,
        files_root=None,
        health=sources,
    )


async def get(state: AppState, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=build_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path)


def healthy_sources(pool: AsyncConnectionPool[Any] | None) -> CallbackHealthSources:
    return CallbackHealthSources(
        pool,
        storage_fn=lambda: breaker_check("closed", backend="local"),
        render_pool_fn=lambda: HealthCheck(True, "Puppeteer OK", {"ready_children": 3}),
        memory_fn=lambda: memory_check(0.452, 0.95),
    )


async def test_health_200_in_the_seed_shape(settings: Settings, queue: JobQueue, pool: Any) -> None:
    r = await get(state_for(settings, queue, healthy_sources(pool)), "/health")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["status", "timestamp", "checks"]
    assert body["status"] == "healthy"
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    assert list(body["checks"]) == ["database", "storage", "puppeteer", "memory"]
    for check in body["checks"].values():
        assert check["healthy"] is True
        assert isinstance(check["message"], str)
    assert body["checks"]["database"]["message"] == "Database connection OK"
    assert body["checks"]["storage"]["message"] == "Storage connection OK"
    assert body["checks"]["puppeteer"]["message"] == "Puppeteer OK"
    assert body["checks"]["memory"]["message"] == "Memory usage: 45.2%"


async def test_health_503_when_database_unreachable(settings: Settings, queue: JobQueue) -> None:
    dead: AsyncConnectionPool[Any] = AsyncConnectionPool(
        "postgresql://postgres@127.0.0.1:1/none", min_size=1, open=False, kwargs={"connect_timeout": 1}
    )
    await dead.open(wait=False)
    try:
        sources = healthy_sources(dead)
        sources.database_timeout = 0.5
        # The pool itself would wait 30 s for a connection: an answer inside 20 s (a generous
        # bound for a 0.5 s check on a busy machine) can only come from database_timeout.
        r = await asyncio.wait_for(get(state_for(settings, queue, sources), "/health"), 20)
    finally:
        await dead.close()
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["healthy"] is False
    assert body["checks"]["storage"]["healthy"] is True


async def test_health_503_when_pool_closed(settings: Settings, queue: JobQueue, pool: Any) -> None:
    await pool.close()
    r = await get(state_for(settings, queue, healthy_sources(pool)), "/health")
    assert r.status_code == 503
    assert r.json()["checks"]["database"]["healthy"] is False


async def test_health_503_when_render_pool_unhealthy(settings: Settings, queue: JobQueue, pool: Any) -> None:
    sources = healthy_sources(pool)
    sources.render_pool_fn = lambda: HealthCheck(False, "No render child is ready (canary failed)")
    r = await get(state_for(settings, queue, sources), "/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["puppeteer"] == {
        "healthy": False,
        "message": "No render child is ready (canary failed)",
    }


async def test_health_report_survives_a_raising_source(pool: Any) -> None:
    def boom() -> HealthCheck:
        raise RuntimeError("kaput")

    sources = healthy_sources(pool)
    sources.storage_fn = boom
    status, body = await health_report(sources)
    assert status == 503
    assert body["checks"]["storage"]["healthy"] is False
    assert "kaput" in body["checks"]["storage"]["message"]


def test_check_helpers() -> None:
    assert breaker_check("open", retry_in=12.3).healthy is False
    assert breaker_check("half_open").healthy is True
    assert memory_check(0.96, 0.95).healthy is False
    assert memory_check(0.5, 0.95).message == "Memory usage: 50.0%"


async def test_database_check_without_pool() -> None:
    assert (await database_check(None)).healthy is False


async def test_metrics_has_the_seed_metrics_and_queue_depth(
    settings: Settings, queue: JobQueue, pool: Any
) -> None:
    for _ in range(2):
        await queue.create_job(
            user_id=USER, export_type="pdf", payload={"source": {"kind": "html", "html": "x"}}
        )
    state = state_for(settings, queue, healthy_sources(pool))
    r = await get(state, "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    text = r.text
    for name in SEED_METRICS:
        assert re.search(rf"^# TYPE {name} (counter|gauge|histogram)$", text, re.M), name
    assert re.search(r"^export_queue_depth 2\.0$", text, re.M)
    assert "export_oldest_pending_job_age_seconds" in text


async def test_metrics_refresh_is_rate_limited_and_survives_db_down(
    settings: Settings, queue: JobQueue, pool: Any
) -> None:
    state = state_for(settings, queue, healthy_sources(pool))
    transport = httpx.ASGITransport(app=build_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert "export_queue_depth 0.0" in (await client.get("/metrics")).text
        await queue.create_job(
            user_id=USER, export_type="pdf", payload={"source": {"kind": "html", "html": "x"}}
        )
        # Within a second: the cached value.
        assert "export_queue_depth 0.0" in (await client.get("/metrics")).text
        await pool.close()
        state._stats_at = float("-inf")
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert "export_queue_depth 0.0" in r.text


async def test_real_uvicorn_server_serves_health(settings: Settings, queue: JobQueue, pool: Any) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = make_server(build_app(state_for(settings, queue, healthy_sources(pool))), 0, "127.0.0.1")
    assert server.port > 0
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        assert {sig: signal.getsignal(sig) for sig in before} == before  # no handlers installed
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://127.0.0.1:{server.port}/health")
        assert r.status_code == 200
        assert r.json()["status"] == "healthy"
        assert "server" not in r.headers
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    assert task.exception() is None


def test_make_server_on_a_taken_port_raises(tmp_path: Path) -> None:
    from starlette.applications import Starlette

    first = make_server(Starlette(), 0, "127.0.0.1")
    try:
        with pytest.raises(OSError):
            make_server(Starlette(), first.port, "127.0.0.1")
    finally:
        first.socket.close()
