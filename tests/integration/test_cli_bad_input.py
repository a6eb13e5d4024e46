"""`export-worker` on bad input: exit code 2 and one line naming the problem, never a traceback."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "export-worker"
NOT_UTF8 = b"\xc8\xff<h1>menu</h1>\xfe"


def cli(*args: str, db_url: str | None, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "EXPORT_WORKER_CONFIG"}}
    environ["EXPORT_WORKER_DATA_DIR"] = str(data_dir)
    if db_url is not None:
        environ["DATABASE_URL"] = db_url
    environ.update(env)
    return subprocess.run([str(CLI), *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("option", ["--html", "--menu"])
def test_enqueue_a_file_that_is_not_utf8(db_url: str, tmp_path: Path, option: str) -> None:
    source = tmp_path / "binary.bin"
    source.write_bytes(NOT_UTF8)
    proc = cli("enqueue", "--user-id", str(uuid.uuid4()), option, str(source), db_url=db_url, data_dir=tmp_path)
    assert_one_clear_line(proc, 2, str(source), "not UTF-8")


@pytest.mark.parametrize("command", [["cancel", "xyz"], ["retry", "xyz"], ["list", "--user-id", "xyz"]])
def test_a_bad_uuid_is_bad_input(db_url: str, tmp_path: Path, command: list[str]) -> None:
    proc = cli(*command, db_url=db_url, data_dir=tmp_path)
    assert_one_clear_line(proc, 2, "not a UUID", "'xyz'")


@pytest.mark.parametrize("limit", ["-5", "0", "abc", "1000001"])
def test_list_limit_out_of_range_is_refused_before_the_database(tmp_path: Path, limit: str) -> None:
    # A closed port: the refusal must come from the argument check, not from Postgres.
    proc = cli("list", "--limit", limit, db_url="postgresql://postgres@127.0.0.1:1/x", data_dir=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--limit" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("timeout", ["nan", "-1", "0", "inf", "soon"])
def test_wait_timeout_must_be_finite_and_positive(tmp_path: Path, timeout: str) -> None:
    # nan used to be accepted and `enqueue --wait` then waited forever.
    html = tmp_path / "page.html"
    html.write_text("<h1>x</h1>", encoding="utf-8")
    proc = cli("enqueue", "--user-id", str(uuid.uuid4()), "--html", str(html), "--wait", "--timeout", timeout,
               db_url="postgresql://postgres@127.0.0.1:1/x", data_dir=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--timeout" in proc.stderr and "Traceback" not in proc.stderr


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(NOT_UTF8)
    proc = cli("--config", str(config), "config", db_url=None, data_dir=tmp_path)
    assert_one_clear_line(proc, 2, str(config), "not UTF-8")


def test_output_piped_to_a_reader_that_stops_early(db_url: str, tmp_path: Path) -> None:
    html = tmp_path / "page.html"
    html.write_text("<h1>x</h1>", encoding="utf-8")
    user = str(uuid.uuid4())
    for _ in range(3):
        assert cli("enqueue", "--user-id", user, "--html", str(html), db_url=db_url, data_dir=tmp_path).returncode == 0
    environ = {k: v for k, v in os.environ.items() if k != "EXPORT_WORKER_CONFIG"}
    environ.update(DATABASE_URL=db_url, EXPORT_WORKER_DATA_DIR=str(tmp_path))
    # The reader closes its end at once, long before the CLI has its rows: every write hits a closed pipe.
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([str(CLI), "list", "--limit", "1000", "--user-id", user], stdout=write_end,
                          stderr=subprocess.PIPE, cwd=ROOT, env=environ, text=True, timeout=300)
    os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "BrokenPipe" not in proc.stderr and "error" not in proc.stderr
