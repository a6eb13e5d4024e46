"""The embedded PostgreSQL without noise: no XDG runtime warning, its chatter in a log file, one line saying where."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from serving import ROOT

pytestmark = pytest.mark.timeout(300)


def run_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XDG_RUNTIME_DIR", "EXPORT_WORKER_CONFIG")}
    env["EXPORT_WORKER_DATA_DIR"] = str(data)
    exe = Path(sys.executable).with_name("export-worker")
    return subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_embedded_commands_print_no_warning_and_log_the_server_to_a_file(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = run_cli(data, "migrate")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stderr == "", f"a plain command printed on stderr: {first.stderr}"

    # -v shows every log line: the server's own (pg_ctl start/stop) go to the file, one line says where.
    verbose = run_cli(data, "-v", "list")
    assert verbose.returncode == 0, verbose.stdout + verbose.stderr
    assert "Warning" not in verbose.stderr, verbose.stderr
    log_file = data / "embedded-postgres.log"
    where = [line for line in verbose.stderr.splitlines() if str(log_file) in line]
    assert len(where) == 1 and "start and stop messages go to" in where[0], verbose.stderr
    assert "pg_ctl" not in verbose.stderr, verbose.stderr
    assert "pg_ctl" in log_file.read_text(encoding="utf-8")
