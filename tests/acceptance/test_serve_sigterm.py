"""`export-worker serve` as a real process: renders jobs, answers /health and /metrics, stops on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

pytestmark = [pytest.mark.timeout(90), pytest.mark.chromium]

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "export-worker"
GRACE_MS = 5000

if not os.path.exists("/usr/bin/chromium"):  # pragma: no cover
    pytestmark.append(pytest.mark.skip(reason="no Chromium binary"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


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
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"EXPORT_WORKER_CONFIG", "SUPABASE_URL", "SENDGRID_API_KEY", "SMTP_HOST"}
    }
    env.update(
        {
            "DATABASE_URL": db_url,
            "EXPORT_WORKER_DATA_DIR": str(tmp_path / "data"),
            "PORT": str(port),
            "MAX_CONCURRENT_RENDERS": "2",
            "GRACEFUL_SHUTDOWN_TIMEOUT_MS": str(GRACE_MS),
            "POLLING_INTERVAL_BUSY_MS": "100",
            "POLLING_INTERVAL_IDLE_MS": "500",
            "WORKER_ID": "acceptance-worker",
        }
    )
    stdout_path = tmp_path / "stdout.log"
    stderr_path = tmp_path / "stderr.log"
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        proc = subprocess.Popen([str(CLI), "serve"], cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
    descendants: list[psutil.Process] = []
    try:
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

        status, body = get(f"http://127.0.0.1:{port}/health")
        assert status == 200, body
        health = json.loads(body)
        assert health["status"] == "healthy"
        assert isinstance(health["timestamp"], str) and health["timestamp"].endswith("Z")
        assert set(health["checks"]) >= {"database", "storage", "puppeteer", "memory"}
        for check in health["checks"].values():
            assert check["healthy"] is True and isinstance(check["message"], str)

        status, body = get(f"http://127.0.0.1:{port}/metrics")
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

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=GRACE_MS / 1000 + 10)
        assert code == 0, stderr_path.read_text()[-3000:]
        assert time.monotonic() - t0 < GRACE_MS / 1000 + 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
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
