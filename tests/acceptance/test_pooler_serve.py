"""Whole workers (`serve` with the null render child) through a real PgBouncer 1.18
configured like Supabase's pooler, pool of 5 server connections (issue 21, item 8).

- Transaction mode, only DATABASE_URL set (LISTEN_NOTIFY left on): two workers take
  60 jobs through the HTTP API; each completes on its first attempt with one mail;
  an event stream reaches `completed` by polling; the LISTEN warning names
  DATABASE_LISTEN_URL.
- Session mode: one worker on default database settings stays healthy within the
  pool of 5 and completes its jobs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from serving import free_port, http_get, serve_env, wait_healthy

from bench.pgbouncer import PgBouncer, PoolMode
from tests.conftest import ADMIN_URL, ROOT

pytestmark = pytest.mark.timeout(150)

SERVER_PORT = int(psycopg.conninfo.conninfo_to_dict(ADMIN_URL).get("port") or 5432)
POOL_SIZE = 5
API_KEY = "pooler-test-key"
# `export-worker serve` with the null render child (no Chromium), settings from the environment:
# the fleet bench's worker.
NULL_SERVE = [sys.executable, "-m", "bench.fleet", "worker"]


def _dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@contextmanager
def null_serve(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A worker with the null child, healthy; SIGTERM and a clean exit 0 at the end."""
    with open(log, "w") as out:
        proc = subprocess.Popen(NULL_SERVE, cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(int(env["PORT"]), proc, log)
        yield proc
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = http_get(f"http://127.0.0.1:{port}/health", timeout=10)
    return status, json.loads(body)


async def create_jobs(ports: list[int], count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def one(n: int) -> httpx.Response:
            return await client.post(f"http://127.0.0.1:{ports[n % len(ports)]}/v1/jobs", headers=headers, json={
                "user_id": str(uuid.uuid4()), "export_type": "pdf", "email": f"user{n}@example.com",
                "payload": {"source": {"kind": "html", "html": f"<h1>job {n}</h1>"}},
            })

        answers = await asyncio.gather(*(one(n) for n in range(count)))
    failures = [(r.status_code, r.text[:200]) for r in answers if r.status_code != 202]
    assert not failures, f"{len(failures)} of {count} POSTs failed: {failures[:5]}"
    return [str(r.json()["id"]) for r in answers]


async def stream_until_final(port: int, job_id: str) -> list[str]:
    """The statuses an event stream sends until a final one."""
    seen: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=60) as client, \
            client.stream("GET", f"http://127.0.0.1:{port}/v1/jobs/{job_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:])["status"])
                if seen[-1] in ("completed", "failed", "cancelled"):
                    return seen
    return seen


def wait_all_done(db_url: str, ids: list[str], timeout: float = 90) -> list[tuple[str, str, int, int]]:
    """(id, status, attempts, mails sent) of every job once each is completed with its mail sent."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                """SELECT j.id::text, j.status, j.attempts,
                          (SELECT count(*) FROM export_mail_outbox m WHERE m.job_id = j.id AND m.sent_at IS NOT NULL)
                   FROM export_jobs j WHERE j.id = ANY(%s::uuid[])""",
                (ids,),
            ).fetchall()
        done = [r for r in rows if r[1] == "completed" and r[3] >= 1]
        if len(done) == len(ids):
            return [(str(a), str(b), int(c), int(d)) for a, b, c, d in rows]
        assert time.monotonic() < deadline, f"{len(done)} of {len(ids)} done: {sorted({r[1] for r in rows})}"
        time.sleep(0.3)


def server_connections(db_url: str) -> int:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (_dbname(db_url),)).fetchone()
    return int(row[0]) if row else 0


def test_two_workers_through_a_transaction_pooler_of_5_complete_60_jobs_once(db_url: str, tmp_path: Path) -> None:
    with PgBouncer(upstream_port=SERVER_PORT, pool_mode=PoolMode.TRANSACTION, default_pool_size=POOL_SIZE) as bouncer, \
            ExitStack() as stack:
        url = bouncer.url(_dbname(db_url))
        ports = [free_port(), free_port()]
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        for i, port in enumerate(ports):
            env = serve_env(url, tmp_path / f"data{i}", port, EXPORT_API_KEYS=API_KEY, WORKER_ID=f"pooled-{i}",
                            MAX_CONCURRENT_RENDERS="2", POLLING_INTERVAL_IDLE_MS="1000")
            stack.enter_context(null_serve(env, logs[i]))

        async def drive() -> tuple[list[str], list[str]]:
            first = (await create_jobs(ports[:1], 1))[0]
            watching = asyncio.create_task(stream_until_final(ports[1], first))
            ids = await create_jobs(ports, 60)
            return [first, *ids], await asyncio.wait_for(watching, 60)

        ids, streamed = asyncio.run(drive())
        rows = wait_all_done(db_url, ids)
        assert streamed[-1] == "completed", streamed
        assert all(status == "completed" and attempts == 1 and mails == 1 for _, status, attempts, mails in rows), rows
        for port in ports:
            status, body = health(port)
            details = body["checks"]["database"]["details"]
            assert status == 200, body
            assert details["endpoint"] == "transaction"
            assert details["connection_budget"] == 4  # queue 2 + HTTP 2; no LISTEN through a transaction pooler
            assert details["connections_in_use"] <= details["connection_budget"]
        assert server_connections(db_url) <= POOL_SIZE + 1  # the pooler's, and our own count query's
    for log in logs:
        text = log.read_text()
        assert "database endpoint: transaction" in text
        warnings = [line for line in text.splitlines() if "LISTEN/NOTIFY off" in line]
        assert len(warnings) == 1 and "DATABASE_LISTEN_URL" in warnings[0], warnings
        assert "prepared statement" not in text and "unsupported startup parameter" not in text


def test_one_worker_on_default_settings_stays_healthy_on_a_session_pool_of_5(db_url: str, tmp_path: Path) -> None:
    with PgBouncer(upstream_port=SERVER_PORT, pool_mode=PoolMode.SESSION, default_pool_size=POOL_SIZE) as bouncer:
        port = free_port()
        log = tmp_path / "worker.log"
        env = serve_env(bouncer.url(_dbname(db_url)), tmp_path / "data", port, EXPORT_API_KEYS=API_KEY)
        with null_serve(env, log):
            async def drive() -> tuple[list[str], list[str]]:
                first = (await create_jobs([port], 1))[0]
                watching = asyncio.create_task(stream_until_final(port, first))  # fed by LISTEN here
                return [first, *await create_jobs([port], 11)], await asyncio.wait_for(watching, 60)

            ids, streamed = asyncio.run(drive())
            rows = wait_all_done(db_url, ids)
            assert streamed[-1] == "completed", streamed
            assert all(r[1] == "completed" and r[2] == 1 for r in rows), rows
            status, body = health(port)
            details = body["checks"]["database"]["details"]
            assert status == 200, body
            assert details["endpoint"] == "session"
            assert details["connection_budget"] == POOL_SIZE  # queue 2 + HTTP 2 + LISTEN 1
            assert details["connections"]["listen"]["open"] == 1  # LISTEN works through a session pooler
            assert details["connections_in_use"] <= POOL_SIZE
    assert "LISTEN/NOTIFY off" not in log.read_text()
