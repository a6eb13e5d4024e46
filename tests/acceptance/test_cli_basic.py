"""The `export-worker` command line, run as a subprocess against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from serving import CLI, ROOT, free_port

pytestmark = pytest.mark.timeout(300)

COMMANDS = ("serve", "migrate", "config", "enqueue", "status", "list", "cancel", "retry", "rescue", "cleanup")


def cli(
    *args: str, db_url: str | None, data_dir: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "EXPORT_WORKER_CONFIG", "SUPABASE_URL", "SENDGRID_API_KEY"}
    }
    environ["EXPORT_WORKER_DATA_DIR"] = str(data_dir)
    if db_url is not None:
        environ["DATABASE_URL"] = db_url
    environ.update(env)
    return subprocess.run(
        [str(CLI), *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def html_file(tmp_path: Path) -> Path:
    f = tmp_path / "page.html"
    f.write_text("<h1>Menu</h1>", encoding="utf-8")
    return f


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = cli("--help", db_url=None, data_dir=tmp_path)
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


def test_migrate_on_a_migrated_database(db_url: str, tmp_path: Path) -> None:
    proc = cli("migrate", db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "schema is up to date"


def test_enqueue_status_list_cancel(db_url: str, tmp_path: Path, html_file: Path) -> None:
    user = str(uuid.uuid4())
    proc = cli("enqueue", "--user-id", user, "--html", str(html_file), db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert proc.stdout == job_id + "\n"
    assert str(uuid.UUID(job_id)) == job_id

    proc = cli(
        "enqueue",
        "--user-id",
        user,
        "--html",
        str(html_file),
        "--type",
        "image",
        "--json",
        db_url=db_url,
        data_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["user_id"] == user and job["export_type"] == "image" and job["status"] == "pending"

    proc = cli("status", job_id, "--json", db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert (shown["id"], shown["status"], shown["user_id"]) == (job_id, "pending", user)
    assert shown["payload"]["source"]["kind"] == "html"

    proc = cli("list", db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert job_id in proc.stdout and job["id"] in proc.stdout

    proc = cli("cancel", job_id, db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cancelled"
    proc = cli("status", job_id, "--json", db_url=db_url, data_dir=tmp_path)
    assert json.loads(proc.stdout)["status"] == "cancelled"
    proc = cli("list", "--status", "cancelled", "--json", db_url=db_url, data_dir=tmp_path)
    assert [r["id"] for r in json.loads(proc.stdout)] == [job_id]
    proc = cli("cancel", job_id, db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")


def test_over_the_limit_exits_3(db_url: str, tmp_path: Path, html_file: Path) -> None:
    user = str(uuid.uuid4())
    for _ in range(5):
        assert (
            cli(
                "enqueue", "--user-id", user, "--html", str(html_file), db_url=db_url, data_dir=tmp_path
            ).returncode
            == 0
        )
    proc = cli("enqueue", "--user-id", user, "--html", str(html_file), db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 3
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refused:"), proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--user-id", "not-a-uuid", "--html", "{html}"), "user_id"),
        (("--user-id", "{user}", "--html", "{missing}"), "cannot read"),
        (("--user-id", "{user}", "--html", "{html}", "--options", "{{not json"), "--options"),
        (("--user-id", "{user}", "--html", "{html}", "--options", "[1, 2]"), "--options"),
        # url sources are refused at creation, as by the HTTP API (no ALLOWED_URL_HOSTS here)
        (("--user-id", "{user}", "--url", "https://example.com/menu"), "source.url"),
        (("--user-id", "{user}", "--url", "file:///etc/passwd"), "source.url"),
        (("--user-id", "{user}", "--url", "javascript:alert(1)"), "source.url"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    db_url: str, tmp_path: Path, html_file: Path, args: tuple[str, ...], needle: str
) -> None:
    values = {"html": str(html_file), "user": str(uuid.uuid4()), "missing": str(tmp_path / "nope.html")}
    argv = [a.format(**values) for a in args]
    proc = cli("enqueue", *argv, db_url=db_url, data_dir=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


@pytest.mark.timeout(300)
def test_embedded_database_when_database_url_is_unset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = cli("migrate", db_url=None, data_dir=data, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("applied "), proc.stdout
    assert (data / "postgres").is_dir()
    assert (data / "postgres" / "PG_VERSION").is_file()
    proc = cli("migrate", db_url=None, data_dir=data, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "schema is up to date"


def test_unreachable_database_is_one_clear_line_at_once(tmp_path: Path) -> None:
    result = cli(
        "status", str(uuid.uuid4()), db_url="postgresql://postgres@127.0.0.1:1/nowhere", data_dir=tmp_path
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: database unavailable:") and "Connection refused" in lines[0]


def test_serve_without_a_database_says_why_and_exits_1(tmp_path: Path) -> None:
    nowhere = "postgresql://postgres@127.0.0.1:1/nowhere"
    result = cli("serve", db_url=nowhere, data_dir=tmp_path, PORT=str(free_port()))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: database unavailable:")
    last_log = json.loads(result.stdout.strip().splitlines()[-1])
    assert last_log["level"] == "error" and last_log["message"] == "cannot start: database unavailable"


def test_serve_on_a_taken_port_says_so_and_leaves_no_child(db_url: str, tmp_path: Path) -> None:
    import socket

    import psutil

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", db_url=db_url, data_dir=tmp_path, timeout=300, PORT=str(port))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on PORT {port}")
    assert "Traceback" not in result.stderr + result.stdout
    scratch = str(tmp_path / "scratch")
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if any(scratch in a for a in p.info["cmdline"] or ())]
    assert leftovers == []
