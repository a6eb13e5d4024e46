"""The operator console's pages with a full table: time per page (the 100 ms goal) and the query plans.

The table is filled the way 30 days of traffic leave it (mostly completed, some
failed and cancelled, a few pending and processing, about 2,000 finished in the
last hour), vacuumed and analysed as autovacuum would. Every page is rendered
through the whole app (routing, queries, templates) several times; the goal is
held to the best time of each page (the best, so that another process on a
shared machine does not decide it). tests/integration/test_console_plans.py
checks the plans (an index, never a whole-table scan) with the same fill; the
times live here, not in a test.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.routing import Mount

from shared.config import ConsoleSettings, Settings

JOBS = 100_000
BUDGET_MS = 100.0
ROUNDS = 7
OPERATOR_KEY = "bench-console-key-0123456789"

FILL = """
INSERT INTO export_jobs (user_id, export_type, status, priority, subscriber, attempts, max_attempts,
                         created_at, updated_at, available_at, started_at, completed_at, error_category,
                         error_message, error_history, payload, metadata, storage_path, file_url,
                         file_size_bytes, claim_order, worker_id, heartbeat_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n %% 5000), 12, '0'))::uuid,
       CASE WHEN n %% 3 = 0 THEN 'image' ELSE 'pdf' END,
       s.status,
       CASE WHEN n %% 4 = 0 THEN 100 ELSE 10 END, n %% 4 = 0,
       CASE WHEN s.status = 'pending' THEN 0 ELSE 1 + n %% 3 END, 3,
       c.created, c.created, c.created, c.created + interval '1 second',
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled') THEN c.created + interval '20 seconds' END,
       CASE WHEN s.status = 'failed' THEN (ARRAY['transient', 'permanent', 'resource', 'validation'])[1 + n %% 4] END,
       CASE WHEN s.status = 'failed' THEN 'render child died (crashed, exit code -9) during the render' END,
       CASE WHEN s.status = 'failed' THEN jsonb_build_array(jsonb_build_object(
           'attempt', 1, 'at', c.created, 'worker_id', 'worker-a', 'category', 'transient',
           'message', 'render child died')) ELSE '[]'::jsonb END,
       jsonb_build_object('source', jsonb_build_object('kind', 'html', 'html', repeat('<p>menu</p>', 40))),
       CASE WHEN s.status = 'completed' THEN jsonb_build_object('pages', 1, 'render_ms', 150,
           'blocked_requests', jsonb_build_array('http://10.0.0.1/x.png')) ELSE '{}'::jsonb END,
       CASE WHEN s.status = 'completed' THEN 'u/' || n || '.pdf' END,
       CASE WHEN s.status = 'completed' THEN 'https://files.example.com/u/' || n || '.pdf?sig=x' END,
       CASE WHEN s.status = 'completed' THEN 40000 + n %% 1000 END,
       extract(epoch FROM c.created) - CASE WHEN n %% 4 = 0 THEN 200 ELSE 20 END,
       CASE WHEN s.status = 'processing' THEN 'worker-a' END,
       CASE WHEN s.status = 'processing' THEN now() END
  FROM generate_series(1, %(jobs)s) AS n,
       LATERAL (SELECT CASE
           WHEN n %% 100 < 80 THEN 'completed' WHEN n %% 100 < 90 THEN 'failed'
           WHEN n %% 100 < 94 THEN 'cancelled' WHEN n %% 100 < 99 THEN 'pending'
           ELSE 'processing' END AS status) AS s,
       -- one job in 50 created in the last hour, the rest over 30 days
       LATERAL (SELECT CASE WHEN n %% 50 = 0 THEN now() - (n %% 3600) * interval '1 second'
                            ELSE now() - (n %% 43200) * interval '1 minute' END AS created) AS c
"""

# The console queries that must walk an index on a full table (their EXPLAIN names no Seq Scan).
INDEXED = ("jobs_page", "finished_per_minute", "get_job", "job_rows", "oldest_pending", "failed_by_category", "counts")


def fill(url: str, jobs: int = JOBS) -> None:
    """``jobs`` rows as 30 days of traffic leave them, vacuumed and analysed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE export_jobs DISABLE TRIGGER USER")  # no 100,000 NOTIFYs
        conn.execute(FILL, {"jobs": jobs})
        conn.execute("ALTER TABLE export_jobs ENABLE TRIGGER USER")
        conn.execute("VACUUM ANALYZE export_jobs")


def samples(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Parameters the console would send for a real failed job of the fill (plans and pages use them)."""
    failed = conn.execute("SELECT id, user_id, created_at FROM export_jobs WHERE status = 'failed' "
                          "ORDER BY created_at DESC LIMIT 1").fetchone()
    assert failed is not None, "the fill has no failed job"
    job_id, user_id, created = failed
    ids = [r[0] for r in conn.execute("SELECT id FROM export_jobs ORDER BY created_at DESC LIMIT 50")]
    return {"status": "failed", "user_id": user_id, "export_type": "image", "limit": 51,
            "created_from": created.replace(hour=0, minute=0), "before_at": created, "before_id": job_id,
            "id": job_id, "ids": ids, "gone_seconds": 60}


def pages(s: dict[str, Any]) -> dict[str, str]:
    """Every console page, by name, for the sample job ``s``."""
    created, job_id = s["before_at"], s["id"]
    return {
        "overview": "/console/",
        "workers": "/console/workers",
        "jobs": "/console/jobs",
        "jobs?status=failed": "/console/jobs?status=failed",
        "jobs?user": f"/console/jobs?user={s['user_id']}",
        "jobs?type=image&from": f"/console/jobs?type=image&from={created:%Y-%m-%d}T00:00",
        "jobs page 2": "/console/jobs?" + urlencode({"status": "failed", "before": f"{created.isoformat()}_{job_id}"}),
        "job": f"/console/jobs/{job_id}",
        "actions": "/console/actions",
        "retry category (confirm)": "/console/actions/retry-failed?category=transient",
    }


def plans(conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of every console query, bound as the console binds them, by name."""
    from supervisor.queue.queries import load, query

    console = load("console.sql")
    filters = {
        "jobs_page (no filter)": [console["filter_all"]],
        "jobs_page (status=failed)": [console["filter_status"]],
        "jobs_page (user)": [console["filter_user"]],
        "jobs_page (type=image, from)": [console["filter_type"], console["filter_created_from"]],
        "jobs_page (status, before: page 2)": [console["filter_status"], console["filter_before"]],
    }
    statements: list[tuple[str, Any]] = [
        (name, console["jobs_page"].format(filters=sql.SQL(" AND ").join(parts))) for name, parts in filters.items()
    ]
    statements += [
        ("counts_by_status_priority", console["counts_by_status_priority"]),
        ("finished_per_minute", console["finished_per_minute"]),
        ("oldest_pending", console["oldest_pending"]),
        ("failed_by_category", console["failed_by_category"]),
        ("get_job (queue.sql)", query("get_job")),
        ("job_rows (live)", console["job_rows"]),
        ("list_workers (workers.sql)", load("workers.sql")["list_workers"]),
        ("recent_audit", console["recent_audit"]),
    ]
    out = {}
    for name, statement in statements:
        explain = sql.Composed([sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "), statement])
        out[name] = "\n".join(r[0] for r in conn.execute(explain, params).fetchall())
    return out


async def page_times(settings: Settings, url: str, paths: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per request of each page, ``rounds`` times, through the whole console app."""
    from supervisor.http.console import console_app
    from supervisor.queue.database import open_pool

    s = msgspec.structs.replace(settings, console=ConsoleSettings(console_keys=f"bench:{OPERATOR_KEY}"))
    pool: AsyncConnectionPool[Any] = await open_pool(url, s, max_size=4)
    try:
        app = Starlette(routes=[Mount("/console", console_app(s, pool))])
        times: dict[str, list[float]] = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            login = await client.post("/console/login", data={"key": OPERATOR_KEY})
            assert login.status_code == 303, login.text[:300]
            for name, path in paths.items():
                times[name] = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    r = await client.get(path)
                    times[name].append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 200, (name, r.status_code, r.text[:300])
        return times
    finally:
        await pool.close()


def run(settings: Settings, url: str, jobs: int = JOBS, rounds: int = ROUNDS) -> dict[str, Any]:
    """Fill a migrated, empty database at ``url`` and time every page."""
    from bench.stats import load

    fill(url, jobs)
    with psycopg.connect(url, autocommit=True) as conn:
        paths = pages(samples(conn))
    load_before = load()
    times = asyncio.run(page_times(settings, url, paths, rounds))
    best = {name: min(t) for name, t in times.items()}
    return {"jobs": jobs, "rounds": rounds, "load_before": load_before, "budget_ms": BUDGET_MS,
            "pages": {name: {"best_ms": min(t), "median_ms": statistics.median(t), "worst_ms": max(t)}
                      for name, t in times.items()},
            "slowest_page": max(best, key=lambda n: best[n]), "slowest_best_ms": max(best.values())}


def table(r: dict[str, Any]) -> str:
    lines = [f"{r['jobs']} jobs, {r['rounds']} requests per page, load before {r['load_before'][0]:.1f}", "",
             "| page | best ms | median ms | worst ms |", "|---|---:|---:|---:|"]
    for name, p in r["pages"].items():
        lines.append(f"| {name} | {p['best_ms']:.1f} | {p['median_ms']:.1f} | {p['worst_ms']:.1f} |")
    return "\n".join(lines)
