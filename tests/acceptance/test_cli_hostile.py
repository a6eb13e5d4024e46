"""The command line against a database it cannot use, a URL that is not one, and Ctrl-C (issue 22, item 7)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest
from serving import CLI, ROOT
from test_cli_basic import cli

pytestmark = pytest.mark.timeout(90)

USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
JOB = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"


@pytest.mark.parametrize(
    "command",
    [["list"], ["rescue"], ["cleanup"], ["status", JOB], ["cancel", JOB], ["retry", JOB],
     ["enqueue", "--user-id", USER, "--html"]],
    ids=["list", "rescue", "cleanup", "status", "cancel", "retry", "enqueue"],
)
def test_an_unmigrated_database_is_one_line_naming_migrate(empty_db_url: str, tmp_path: Path,
                                                          command: list[str]) -> None:
    if command[-1] == "--html":
        page = tmp_path / "page.html"
        page.write_text("<p>x</p>")
        command = [*command, str(page)]
    done = cli(*command, db_url=empty_db_url, data_dir=tmp_path / "data")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "run `export-worker migrate` first" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("url", ["notaurl", "postgress://user:pw@127.0.0.1/db", "host=127.0.0.1 port"])
def test_a_database_url_that_is_not_one_exits_2(url: str, tmp_path: Path) -> None:
    for command in (["list"], ["migrate"], ["serve"]):
        done = cli(*command, db_url=url, data_dir=tmp_path / "data")
        assert done.returncode == 2, (command, done.stderr)
        assert "DATABASE_URL is not a valid connection string" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_ctrl_c_during_wait_says_the_job_stays_queued(db_url: str, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<p>waiting</p>")
    env = {k: v for k, v in os.environ.items() if k not in {"EXPORT_WORKER_CONFIG", "SUPABASE_URL"}}
    env.update(DATABASE_URL=db_url, EXPORT_WORKER_DATA_DIR=str(tmp_path / "data"))
    # No worker runs: the job stays pending while --wait waits.
    proc = subprocess.Popen([str(CLI), "enqueue", "--user-id", USER, "--html", str(page), "--wait"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        job_id = proc.stdout.readline().strip()  # printed once the job exists
        assert job_id, proc.stderr.read()
        assert proc.stderr.readline().startswith("pending"), "--wait shows progress before the interrupt"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert f"job {job_id} is still pending and stays queued" in err, err
    assert f"export-worker cancel {job_id}" in err and "Traceback" not in err, err
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT status FROM export_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == ("pending",)
