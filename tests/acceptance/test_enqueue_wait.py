"""`export-worker enqueue --wait` against a real `export-worker serve`: progress, file, exit codes."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from serving import CLI, ROOT, free_port, requires_chromium, running_serve, serve_env

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

BISTRO = ROOT / "shared" / "samples" / "bistro.json"
UUID_LEN = 36


@pytest.fixture
def worker_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return serve_env(db_url, tmp_path / "data", free_port(), MAX_PAGES="3")


@pytest.fixture
def serve(worker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    with running_serve(worker_env, tmp_path / "serve.log") as proc:
        yield proc


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
    serve: subprocess.Popen[str], worker_env: dict[str, str], db_url: str, tmp_path: Path
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

    # A document longer than MAX_PAGES fails for good in the child: exit 4, the error on stderr.
    # (A url source off the allowlist no longer gets this far: it is refused at creation, exit 2.)
    refused = enqueue(worker_env, "--url", "http://not-allowed.example/")
    assert refused.returncode == 2 and "source.url" in refused.stderr, (refused.stdout, refused.stderr)
    long_html = tmp_path / "long.html"
    long_html.write_text('<div style="page-break-after:always">page</div>' * 8, encoding="utf-8")
    proc = enqueue(worker_env, "--html", str(long_html))
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    job_id = proc.stdout.splitlines()[0]
    assert str(uuid.UUID(job_id)) == job_id
    status, category, message = job_row(db_url, job_id)
    assert status == "failed" and message, (status, category, message)
    assert category == "validation", (category, message)
    final = proc.stderr.strip().splitlines()[-1]
    assert final == f"failed: [{category}] {message}", proc.stderr
    assert "MAX_PAGES" in final, final
    assert any(line.startswith("failed (attempt ") for line in proc.stderr.splitlines()), proc.stderr

    # --json --wait: stdout is one JSON document, the final job.
    proc = enqueue(worker_env, "--menu", str(BISTRO), "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    final_job = json.loads(proc.stdout)
    assert final_job["status"] == "completed" and final_job["file_size_bytes"] > 0
