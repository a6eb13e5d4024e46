"""`export-worker enqueue --wait` against a real `export-worker serve`: progress, file, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

pytestmark = [pytest.mark.timeout(120), pytest.mark.chromium]

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "export-worker"
BISTRO = ROOT / "shared" / "samples" / "bistro.json"
UUID_LEN = 36

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


def wait_healthy(port: int, proc: subprocess.Popen[str], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()[-3000:]}"
        try:
            status, body = get(f"http://127.0.0.1:{port}/health", timeout=3)
            if status == 200:
                return
            last = (status, body[:500])
        except OSError as exc:  # not listening yet
            last = exc
        assert time.monotonic() < deadline, f"/health not 200 after {timeout}s: {last}"
        time.sleep(0.1)


@pytest.fixture
def worker_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"EXPORT_WORKER_CONFIG", "SUPABASE_URL", "SENDGRID_API_KEY", "SMTP_HOST", "ALLOWED_URL_HOSTS"}
    }
    env.update(
        {
            "DATABASE_URL": db_url,
            "EXPORT_WORKER_DATA_DIR": str(tmp_path / "data"),
            "PORT": str(free_port()),
            "MAX_CONCURRENT_RENDERS": "1",
            "POLLING_INTERVAL_BUSY_MS": "100",
            "POLLING_INTERVAL_IDLE_MS": "500",
            "GRACEFUL_SHUTDOWN_TIMEOUT_MS": "5000",
        }
    )
    return env


@pytest.fixture
def serve(worker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(CLI), "serve"], cwd=ROOT, env=worker_env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        wait_healthy(int(worker_env["PORT"]), proc, log)
        yield proc
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        assert code == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def enqueue(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "enqueue", "--user-id", str(uuid.uuid4()), *args, "--wait", "--timeout", "80"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_row(db_url: str, job_id: str) -> tuple[str, str | None, str | None]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT status, error_category, error_message FROM export_jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None, job_id
    return row[0], row[1], row[2]


def test_enqueue_wait_completes_and_fails(
    serve: subprocess.Popen[str], worker_env: dict[str, str], db_url: str
) -> None:
    # A menu renders: exit 0, the id alone on stdout's first line, progress and the file on stderr.
    proc = enqueue(worker_env, "--menu", str(BISTRO))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr
    job_id = lines[0]
    assert len(job_id) == UUID_LEN and str(uuid.UUID(job_id)) == job_id, lines
    assert proc.stdout.strip() == job_id, "without --json stdout holds the id alone"
    stderr = proc.stderr
    progress = [line for line in stderr.splitlines() if "(attempt " in line]
    assert progress, stderr
    assert progress[0].startswith(("pending", "processing")), stderr
    assert any(line.startswith("completed (attempt 1 of") for line in progress), stderr
    assert any(line.startswith("completed: ") and line.endswith(" bytes") for line in stderr.splitlines()), stderr
    file_lines = [line.strip() for line in stderr.splitlines() if line.strip().startswith("file: ")]
    assert len(file_lines) == 1, stderr
    path = Path(file_lines[0].removeprefix("file: "))
    assert path.is_absolute() and path.is_file(), stderr
    assert path.read_bytes().startswith(b"%PDF-"), path
    assert path.stat().st_size > 1000
    assert job_row(db_url, job_id)[0] == "completed"

    # A URL off the (empty) allowlist fails for good: exit 4, the error on stderr.
    proc = enqueue(worker_env, "--url", "http://not-allowed.example/")
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    job_id = proc.stdout.splitlines()[0]
    assert str(uuid.UUID(job_id)) == job_id
    status, category, message = job_row(db_url, job_id)
    assert status == "failed" and message, (status, category, message)
    assert category == "permanent", (category, message)
    final = proc.stderr.strip().splitlines()[-1]
    assert final == f"failed: [{category}] {message}", proc.stderr
    assert "not-allowed.example" in final, final
    assert any(line.startswith("failed (attempt ") for line in proc.stderr.splitlines()), proc.stderr

    # --json --wait: stdout is one JSON document, the final job.
    proc = enqueue(worker_env, "--menu", str(BISTRO), "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    final_job = json.loads(proc.stdout)
    assert final_job["status"] == "completed" and final_job["file_size_bytes"] > 0
