"""`export-worker serve` as a real process: renders jobs, answers /health and /metrics, stops on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from serving import free_port, http_get, requires_chromium, running_serve, serve_env

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

GRACE_MS = 5000


def wait_for_status(
    db_url: str, job_ids: list[str], statuses: set[str], timeout: float, proc: subprocess.Popen[str]
) -> dict[str, tuple[str, str | None]]:
    deadline = time.monotonic() + timeout
    rows: dict[str, tuple[str, str | None]] = {}
    while True:
        with psycopg.connect(db_url) as conn:
            for job_id, status, error in conn.execute(
                "SELECT id::text, status, error_message FROM export_jobs WHERE id = ANY(%s::uuid[])", (job_ids,)
            ):
                rows[job_id] = (status, error)
        if len(rows) == len(job_ids) and all(s in statuses for s, _ in rows.values()):
            return rows
        assert proc.poll() is None, f"worker exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"jobs not in {statuses} after {timeout}s: {rows}"
        time.sleep(0.1)


def test_serve_renders_reports_and_stops_on_sigterm(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = serve_env(
        db_url,
        tmp_path / "data",
        port,
        MAX_CONCURRENT_RENDERS="2",
        GRACEFUL_SHUTDOWN_TIMEOUT_MS=str(GRACE_MS),
        WORKER_ID="acceptance-worker",
    )
    stdout_path = tmp_path / "stdout.log"
    stderr_path = tmp_path / "stderr.log"
    descendants: list[psutil.Process] = []
    try:
        with running_serve(env, stdout_path, stderr_log=stderr_path, stop_timeout=GRACE_MS / 1000 + 60) as proc:
            # Jobs go in through the product's own SQL function, as the web app does.
            job_ids = []
            with psycopg.connect(db_url, autocommit=True) as conn:
                for i in range(4):
                    payload = {"source": {"kind": "html", "html": f"<h1>acceptance {i}</h1>"}}
                    row = conn.execute(
                        "SELECT id::text FROM create_export_job(%s::uuid, 'pdf', %s::jsonb)",
                        (str(uuid.uuid4()), json.dumps(payload)),
                    ).fetchone()
                    assert row is not None
                    job_ids.append(row[0])
            rows = wait_for_status(db_url, job_ids, {"completed", "failed"}, 60, proc)
            assert all(status == "completed" for status, _ in rows.values()), rows

            status, _, body = http_get(f"http://127.0.0.1:{port}/health")
            assert status == 200, body
            health = json.loads(body)
            assert health["status"] == "healthy"
            assert isinstance(health["timestamp"], str) and health["timestamp"].endswith("Z")
            assert set(health["checks"]) >= {"database", "storage", "puppeteer", "memory"}
            for check in health["checks"].values():
                assert check["healthy"] is True and isinstance(check["message"], str)

            status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            values = [
                float(line.rsplit(" ", 1)[1])
                for line in body.decode().splitlines()
                if line.startswith("export_jobs_completed_total")
            ]
            assert values and sum(values) >= len(job_ids), body.decode()[:2000]

            with contextlib.suppress(psutil.Error):
                descendants = psutil.Process(proc.pid).children(recursive=True)
            assert descendants, "the worker should have render children"
        # Leaving the block sent SIGTERM and asserted exit code 0 (within a generous bound).
    finally:
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()

    # No render child or Chromium outlives the worker.
    deadline = time.monotonic() + 5
    while True:
        left = []
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    left.append(child)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, left

    lines = [line for line in stdout_path.read_text().splitlines() if line.strip()]
    assert lines, stderr_path.read_text()[-2000:]
    records: list[dict[str, Any]] = []
    for line in lines:
        record = json.loads(line)  # every stdout line is one JSON object
        assert isinstance(record, dict)
        for key in ("timestamp", "level", "message", "worker_id"):
            assert key in record, record
        assert record["worker_id"] == "acceptance-worker"
        records.append(record)
    completed = [r for r in records if r["message"] == "job completed"]
    assert {r["job_id"] for r in completed} == set(job_ids)
    assert all(isinstance(r["duration_ms"], int | float) and r["duration_ms"] > 0 for r in completed)
    assert any(r["message"] == "worker stopped" for r in records)


def test_a_thread_stuck_after_the_stop_cannot_keep_serve_alive(db_url: str, tmp_path: Path) -> None:
    """An upload thread that never returns (a pause point held shut) would keep the interpreter
    joining it forever; the exit guard ends the process and names the stuck thread."""
    gate = tmp_path / "gate"
    gate.mkdir()
    port = free_port()
    env = serve_env(db_url, tmp_path / "data", port, GRACEFUL_SHUTDOWN_TIMEOUT_MS="1000",
                    EXPORT_WORKER_TEST_GATE_DIR=str(gate))
    log = tmp_path / "serve.log"
    # Without the guard the stuck thread would hold serve forever; the bound is only generous.
    with running_serve(env, log, stop_timeout=90) as proc:
        (gate / f"arm-upload-{proc.pid}").touch()
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT id::text FROM create_export_job(%s::uuid, 'pdf', %s::jsonb)",
                (str(uuid.uuid4()), json.dumps({"source": {"kind": "html", "html": "<h1>stuck</h1>"}})),
            ).fetchone()
        assert row is not None
        deadline = time.monotonic() + 60
        while not (gate / f"paused-upload-{proc.pid}").exists():
            assert time.monotonic() < deadline, "the upload never reached its pause point"
            time.sleep(0.05)
    # running_serve sent SIGTERM and saw exit code 0, with the upload thread still paused.
    assert not (gate / f"go-upload-{proc.pid}").exists()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    forced = [entry for entry in lines if entry.get("message", "").startswith("exit: cleanup")]
    assert len(forced) == 1, lines[-5:]
    assert any("pause_point" in stack for stack in forced[0]["threads"].values()), forced[0]["threads"]
    # Nothing is lost: the job is still claimed (rescued later), not completed and not failed.
    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT status FROM export_jobs WHERE id = %s", (row[0],)).fetchone()
    assert status == ("processing",)
