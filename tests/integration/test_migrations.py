"""Schema migrations: ordered, applied once, safe concurrently, Supabase-aware (DESIGN.md section 3)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from supervisor.queue.migrate import available_migrations, migrate

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "export-worker"

CONTRACT = {
    "id": ("uuid", "NO"),
    "user_id": ("uuid", "NO"),
    "menu_id": ("uuid", "YES"),
    "export_type": ("text", None),
    "status": ("text", None),
    "priority": ("integer", None),
    "worker_id": ("text", "YES"),
    "attempts": ("integer", None),
    "max_attempts": ("integer", None),
    "created_at": ("timestamp with time zone", None),
    "updated_at": ("timestamp with time zone", None),
    "started_at": ("timestamp with time zone", "YES"),
    "completed_at": ("timestamp with time zone", "YES"),
    "available_at": ("timestamp with time zone", None),
    "heartbeat_at": ("timestamp with time zone", "YES"),
    "error_message": ("text", "YES"),
    "error_category": ("text", "YES"),
    "storage_path": ("text", "YES"),
    "file_url": ("text", "YES"),
    "file_size_bytes": ("bigint", "YES"),
    "payload": ("jsonb", None),
    "metadata": ("jsonb", None),
}


def _recorded(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT name, count(*)::int FROM export_worker_migrations GROUP BY name ORDER BY name"
        ).fetchall()


def test_fresh_database_migrates_and_has_every_contract_column(empty_db_url: str) -> None:
    names = [m.name for m in available_migrations()]
    assert names == sorted(names) and len(names) >= 3
    assert migrate(empty_db_url) == names
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute(
            """SELECT column_name, data_type, is_nullable FROM information_schema.columns
                WHERE table_schema = 'public' AND table_name = 'export_jobs'"""
        ).fetchall()
    columns = {name: (dtype, nullable) for name, dtype, nullable in rows}
    for name, (dtype, nullable) in CONTRACT.items():
        assert name in columns, f"contract column {name} missing"
        assert columns[name][0] == dtype, f"{name} is {columns[name][0]}, want {dtype}"
        if nullable is not None:
            assert columns[name][1] == nullable, f"{name} nullability {columns[name][1]}, want {nullable}"
    assert _recorded(empty_db_url) == [(n, 1) for n in names]


def test_second_run_applies_nothing(empty_db_url: str) -> None:
    first = migrate(empty_db_url)
    assert first
    assert migrate(empty_db_url) == []
    assert _recorded(empty_db_url) == [(n, 1) for n in first]


def test_two_migrate_processes_at_once(empty_db_url: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(DATABASE_URL=empty_db_url, EXPORT_WORKER_DATA_DIR=str(tmp_path / "data"))
    env.pop("EXPORT_WORKER_CONFIG", None)
    procs = [
        subprocess.Popen(
            [str(CLI), "migrate"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=50) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    stdouts = sorted(o for o, _ in outs)
    # One applied everything, the other waited on the lock and found nothing to do.
    assert stdouts[0].startswith("applied "), stdouts
    assert stdouts[1].strip() == "schema is up to date", stdouts
    assert _recorded(empty_db_url) == [(m.name, 1) for m in available_migrations()]


def _fake_supabase(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA auth")
        conn.execute("CREATE TABLE auth.users (id uuid PRIMARY KEY, email text)")
        conn.execute(
            "CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS "
            "$$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$"
        )
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'service_role'").fetchone()
        if not exists:
            # Roles are cluster-wide; other tests may have created it already.
            with contextlib.suppress(psycopg.errors.DuplicateObject):
                conn.execute("CREATE ROLE service_role NOLOGIN")
        conn.execute("CREATE PUBLICATION supabase_realtime")


def test_supabase_rls_policy_and_publication(empty_db_url: str) -> None:
    _fake_supabase(empty_db_url)
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        rls = conn.execute(
            "SELECT relname, relrowsecurity FROM pg_class WHERE relname IN "
            "('export_jobs', 'export_mail_outbox', 'export_queue_settings') ORDER BY relname"
        ).fetchall()
        assert rls == [("export_jobs", True), ("export_mail_outbox", True), ("export_queue_settings", True)]
        policies = conn.execute(
            "SELECT policyname, cmd, qual FROM pg_policies WHERE tablename = 'export_jobs'"
        ).fetchall()
        assert len(policies) == 1
        assert policies[0][0] == "export_jobs_owner_read" and policies[0][1] == "SELECT"
        assert "auth.uid()" in policies[0][2]
        pub = conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
        ).fetchall()
        assert pub == [("export_jobs",)]
        can = conn.execute(
            "SELECT has_function_privilege('service_role', "
            "'create_export_job(uuid, text, jsonb, uuid, boolean, text, text, text)', 'EXECUTE')"
        ).fetchone()
        assert can == (True,)
        # The recipient falls back to auth.users.email.
        conn.execute(
            "INSERT INTO auth.users VALUES ('11111111-1111-1111-1111-111111111111', 'owner@example.com')"
        )
        rec = conn.execute(
            "SELECT export_job_recipient('11111111-1111-1111-1111-111111111111', NULL)"
        ).fetchone()
        assert rec == ("owner@example.com",)


def test_supabase_steps_are_skipped_elsewhere(empty_db_url: str) -> None:
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute(
            "SELECT relrowsecurity FROM pg_class WHERE relname = 'export_jobs'"
        ).fetchone() == (False,)
        assert conn.execute(
            "SELECT count(*) FROM pg_policies WHERE tablename = 'export_jobs'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)


def test_publication_without_supabase_auth(empty_db_url: str) -> None:
    """A realtime publication without Supabase auth: only the publication step runs."""
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION supabase_realtime")
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
        ).fetchall() == [("export_jobs",)]
        assert conn.execute(
            "SELECT relrowsecurity FROM pg_class WHERE relname = 'export_jobs'"
        ).fetchone() == (False,)
