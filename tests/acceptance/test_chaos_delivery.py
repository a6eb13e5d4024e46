"""Chaos: three real workers on one database and one data directory, one killed, one frozen mid-upload.

The promise under test (README, "Fenced delivery"): a worker that lost its claim never
touches a finished job's file. Worker B is frozen for real (SIGSTOP of its whole tree)
while it is inside an upload: a test-only pause point (shared/testhooks.py) holds
the upload thread at its start so the freeze lands there every run, not by luck.
Worker A is killed with SIGKILL mid-run. Worker C rescues both, and B is resumed
after C completed B's job. Every job must end completed once, with exactly one live
object that is the one its row describes, one mail, and nothing left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg.rows import dict_row
from serving import CLI, ROOT, free_port, requires_chromium, serve_env, start_serve, wait_healthy
from serving import until as _until

from supervisor.delivery.storage import build_storage
from supervisor.delivery.sweep import sweep_temp
from supervisor.queue.database import open_pool
from supervisor.queue.retention import run_retention
from tests.conftest import make_settings

pytestmark = [pytest.mark.timeout(180), pytest.mark.chromium, requires_chromium]

JOBS = 120
USERS = 6
STALE_SECONDS = 5


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _signal_tree(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def _rows(db_url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return list(conn.execute(query, params))


def _count(db_url: str, status: str) -> int:
    return int(_rows(db_url, "SELECT count(*) AS n FROM export_jobs WHERE status = %s", status)[0]["n"])


def test_lost_claims_never_touch_a_finished_jobs_file(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    gate = tmp_path / "gate"
    gate.mkdir()
    shared = {
        "LINK_SECRET": "chaos-link-secret-0123456789abcdef",
        "STALE_AFTER_SECONDS": str(STALE_SECONDS),
        "HEARTBEAT_INTERVAL_SECONDS": "1",
        "MAX_ATTEMPTS": "6",
        "RETRY_BACKOFF_BASE_MS": "100",
        "RETRY_BACKOFF_CAP_MS": "500",
        "FREE_USER_PENDING_LIMIT": "1000",
        "FREE_USER_HOURLY_LIMIT": "1000",
        "GRACEFUL_SHUTDOWN_TIMEOUT_MS": "10000",
        "MAIL_LEASE_SECONDS": "5",  # mails A had leased when it died are sent by B or C after this
        "EXPORT_WORKER_TEST_GATE_DIR": str(gate),
    }
    subprocess.run([str(CLI), "migrate"], cwd=ROOT, env=serve_env(db_url, data_dir, free_port(), **shared),
                   check=True, capture_output=True, timeout=60)
    workers: dict[str, tuple[subprocess.Popen[str], int, Path]] = {}
    try:
        for name in ("A", "B", "C"):
            port = free_port()
            env = serve_env(db_url, data_dir, port, WORKER_ID=f"chaos-{name}", **shared)
            log = tmp_path / f"{name}.log"
            workers[name] = (start_serve(env, log), port, log)
        for proc, port, log in workers.values():
            wait_healthy(port, proc, log, timeout=90)
        a, b, _c = (workers[n][0] for n in "ABC")

        # B pauses inside its first upload; the test then freezes it for real.
        (gate / f"arm-upload-{b.pid}").touch()
        users = [str(uuid.uuid4()) for _ in range(USERS)]
        job_ids: list[str] = []
        with psycopg.connect(db_url, autocommit=True) as conn:
            for i in range(JOBS):
                payload = {"source": {"kind": "html", "html": f"<h1>chaos job {i}</h1><p>{'menu line ' * 40}</p>"}}
                row = conn.execute(
                    "SELECT id::text FROM create_export_job(%s, 'pdf', %s::jsonb, NULL, false, NULL, %s)",
                    (users[i % USERS], json.dumps(payload), f"reader{i}@example.com"),
                ).fetchone()
                assert row is not None
                job_ids.append(row[0])

        paused = _until(lambda: (gate / f"paused-upload-{b.pid}").exists(), 60, "B to reach its upload")
        assert paused
        frozen = _tree(b.pid)
        _signal_tree(frozen, signal.SIGSTOP)
        frozen_job = (gate / f"paused-upload-{b.pid}").read_text()
        frozen_attempt = _rows(db_url, "SELECT attempts FROM export_jobs WHERE id = %s", frozen_job)[0]["attempts"]

        # A dies mid-run, with its whole tree.
        _until(lambda: _count(db_url, "completed") >= 20, 60, "20 jobs completed")
        _signal_tree(_tree(a.pid), signal.SIGKILL)
        a.wait(10)

        # B's job is rescued (B's heartbeats stopped with it), rendered and completed by
        # another worker: C, or A when A claimed it before it died (on a slow machine A
        # may still be alive when the rescue returns the job to pending).
        def rescued_and_completed() -> bool:
            rows = _rows(db_url, "SELECT status, worker_id FROM export_jobs WHERE id = %s", frozen_job)
            return rows[0]["status"] == "completed" and rows[0]["worker_id"] in ("chaos-A", "chaos-C")

        _until(rescued_and_completed, 90, "another worker to complete the frozen job")
        winner = _rows(db_url, "SELECT storage_path, completed_at FROM export_jobs WHERE id = %s", frozen_job)[0]
        winner_file = data_dir / "files" / winner["storage_path"]
        winner_bytes = winner_file.read_bytes()

        # B wakes up inside its upload, finishes writing, and must find its claim lost.
        _signal_tree(frozen, signal.SIGCONT)
        (gate / f"go-upload-{b.pid}").touch()
        _until(lambda: "object of a lost claim deleted" in workers["B"][2].read_text(), 30,
               "B to delete its late object")

        _until(lambda: _count(db_url, "completed") == JOBS, 120, "every job completed")
        _until(lambda: not _rows(db_url, "SELECT 1 FROM export_mail_outbox WHERE sent_at IS NULL"), 30,
               "every mail sent")
        for name in ("B", "C"):
            proc = workers[name][0]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, workers[name][2].read_text()[-3000:]
    finally:
        for proc, _, _ in workers.values():
            if proc.poll() is None:
                _signal_tree(_tree(proc.pid), signal.SIGCONT)
                proc.kill()
                proc.wait(10)

    # The winner's file was never touched after its completion.
    assert winner_file.read_bytes() == winner_bytes
    late_key = winner["storage_path"].rsplit("/", 1)[0] + f"/{frozen_attempt}.pdf"
    assert late_key != winner["storage_path"]
    assert not (data_dir / "files" / late_key).exists()

    # Whatever A left mid-upload is an orphan that retention's sweep removes.
    settings = make_settings(tmp_path, db_url, EXPORT_WORKER_DATA_DIR=str(data_dir), LINK_SECRET=shared["LINK_SECRET"])

    async def sweep_orphans() -> int:
        pool = await open_pool(db_url, settings, max_size=2)
        try:
            result = await run_retention(pool, build_storage(settings, data_dir), settings.retention,
                                         orphan_after_seconds=0)
            return result.orphans_deleted
        finally:
            await pool.close()

    orphans = asyncio.run(sweep_orphans())
    assert orphans <= 1  # at most A's one in-flight upload
    sweep_temp(data_dir, local_idle_seconds=0)

    rows = {r["id"]: r for r in _rows(db_url, "SELECT id::text, status, storage_path, file_size_bytes, metadata, "
                                               "completed_at FROM export_jobs")}
    assert len(rows) == JOBS and all(r["status"] == "completed" for r in rows.values())
    stored = sorted(str(p.relative_to(data_dir / "files")) for p in (data_dir / "files").rglob("*") if p.is_file())
    # Exactly one live object per job, and it is the one the row describes.
    assert stored == sorted(r["storage_path"] for r in rows.values())
    for job_id, row in rows.items():
        file = data_dir / "files" / row["storage_path"]
        body = file.read_bytes()
        assert len(body) == row["file_size_bytes"], job_id
        assert hashlib.sha256(body).hexdigest() == row["metadata"]["sha256"], job_id
        # No late overwrite: the file was last written before its job completed.
        written = datetime.fromtimestamp(file.stat().st_mtime, UTC)
        assert written <= row["completed_at"], (job_id, written, row["completed_at"])
    # One completion mail per job, and no other.
    outbox = _rows(db_url, "SELECT job_id::text, kind, sent_at FROM export_mail_outbox")
    assert sorted(r["job_id"] for r in outbox) == sorted(job_ids)
    assert all(r["kind"] == "completed" and r["sent_at"] is not None for r in outbox)
    assert sorted(p.name for p in (data_dir / "mail").glob("*.eml")) == sorted(f"{j}-completed.eml" for j in job_ids)
    # Nothing left behind: no upload temp files, no scratch, no Chromium of any of the three.
    assert [p for p in (data_dir / "files" / ".uploads").rglob("*") if p.is_file()] == []
    assert [p for p in (data_dir / "scratch").rglob("*") if p.is_file()] == []
    leftovers = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                 if str(data_dir) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    assert os.listdir(gate)  # the pause point was really used
