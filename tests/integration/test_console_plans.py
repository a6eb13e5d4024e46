"""With 100,000 jobs in the table every console page answers, and its queries walk an index.

The fill is the benchmark's (bench/console.py: 30 days of traffic, vacuumed and
analysed). The plans are EXPLAIN (ANALYZE, BUFFERS) of every console query, bound as
the console binds them; they are written to the test's directory. How fast each page
renders is a benchmark goal (`export-worker bench`, "slowest console page"), not a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.routing import Mount

from bench.console import INDEXED, JOBS, fill, pages, plans, samples
from shared.config import ConsoleSettings, Settings
from supervisor.http.console import console_app
from supervisor.queue.workers import WorkerRegistry
from tests.integration.console_helpers import CONSOLE_KEYS, OPERATOR_KEY
from tests.integration.test_console import snapshot

pytestmark = pytest.mark.timeout(300)


async def test_every_page_answers_and_walks_an_index_with_100000_jobs(
    db_url: str, settings: Settings, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    fill(db_url, JOBS)
    s = msgspec.structs.replace(settings, console=ConsoleSettings(console_keys=CONSOLE_KEYS))
    await WorkerRegistry(pool, "worker-a", forget_hours=24).beat(snapshot("worker-a"))
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (JOBS,)
        params = samples(conn)
        explained = plans(conn, params)
    (tmp_path / "console-plans.txt").write_text("\n\n".join(f"-- {n}\n{p}" for n, p in explained.items()))
    for name, plan in explained.items():
        if name.startswith(INDEXED):
            assert "Seq Scan on export_jobs" not in plan, f"{name}:\n{plan}"

    app = Starlette(routes=[Mount("/console", console_app(s, pool))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        assert (await client.post("/console/login", data={"key": OPERATOR_KEY})).status_code == 303
        for name, path in pages(params).items():
            r = await client.get(path)
            assert r.status_code == 200, (name, r.text[:500])
