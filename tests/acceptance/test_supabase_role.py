"""The README's worker-role recipe on a Supabase-shaped database (issue 21, item 7).

The database is built the way Supabase's init scripts leave it where it matters:
the roles anon, authenticated, service_role and supabase_admin; the `auth` schema
owned by supabase_admin, with auth.users and auth.uid(); the `supabase_realtime`
publication owned by postgres; a table of the web app's own. Then `migrate` runs as
postgres, the recipe's SQL (read from README.md, so the doc and this test cannot
drift) runs statement by statement, and `serve` runs as that least-privilege role
and completes a job with its mail, while the role can touch nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from serving import free_port, serve_env
from test_pooler_serve import API_KEY, create_jobs, null_serve, wait_all_done

from supervisor.queue.migrate import migrate
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

RECIPE_MARK = "<!-- worker-role-recipe: tests/acceptance/test_supabase_role.py runs this -->"


def readme_recipe() -> list[str]:
    """The statements of the recipe block in README.md, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split(RECIPE_MARK, 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    code = "\n".join(line.split("--", 1)[0] for line in block.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def _create_role(conn: psycopg.Connection[Any], name: str, options: str) -> None:
    with contextlib.suppress(psycopg.errors.DuplicateObject):  # roles are cluster-wide
        conn.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name)))


def build_supabase_shape(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for role in ("anon", "authenticated"):
            _create_role(conn, role, "NOLOGIN NOINHERIT")
        _create_role(conn, "service_role", "NOLOGIN NOINHERIT BYPASSRLS")
        _create_role(conn, "supabase_admin", "NOLOGIN")
        conn.execute("CREATE SCHEMA auth AUTHORIZATION supabase_admin")
        conn.execute("SET ROLE supabase_admin")
        conn.execute("CREATE TABLE auth.users (id uuid PRIMARY KEY, email text)")
        conn.execute(
            "CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT nullif("
            "current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$"
        )
        conn.execute("GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role")
        conn.execute("RESET ROLE")
        conn.execute("CREATE PUBLICATION supabase_realtime")  # owned by postgres, as on Supabase
        conn.execute("CREATE TABLE public.menus (id uuid PRIMARY KEY, name text)")  # the web app's own


@pytest.fixture
def worker_role(empty_db_url: str) -> Iterator[str]:
    """A unique role name for this run (roles are cluster-wide; other suites share the server)."""
    name = f"ew_runtime_{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(psycopg.Error), psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _with(url: str, *, db: str | None = None, user: str | None = None) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    if db:
        params["dbname"] = db
    if user:
        params["user"] = user
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def test_the_readme_recipe_gives_serve_a_least_privilege_role_on_a_supabase_shaped_database(
    empty_db_url: str, worker_role: str, tmp_path: Path
) -> None:
    build_supabase_shape(empty_db_url)
    migrate(empty_db_url)  # as postgres
    statements = readme_recipe()
    assert len(statements) >= 2, statements
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        for statement in statements:  # line by line, each must succeed
            conn.execute(re.sub(r"\bexport_worker\b", worker_role, statement).encode())
        rights = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
            (worker_role,),
        ).fetchone()
        in_publication = conn.execute(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
            " AND tablename = 'export_jobs'"
        ).fetchone()
    assert rights == (False, False, False, False)
    assert in_publication == (1,)
    role_url = _with(empty_db_url, user=worker_role)
    with psycopg.connect(role_url, autocommit=True) as conn:
        for forbidden in ("SELECT * FROM auth.users", "SELECT * FROM public.menus",
                          "CREATE TABLE public.sneaky (x int)", "ALTER TABLE export_jobs DISABLE ROW LEVEL SECURITY"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden.encode())
    # `serve` as that role: it migrates at start (nothing to do), claims, completes, mails.
    port = free_port()
    env = serve_env(role_url, tmp_path / "data", port, EXPORT_API_KEYS=API_KEY)
    with null_serve(env, tmp_path / "worker.log"):
        ids = asyncio.run(create_jobs([port], 3))
        rows = wait_all_done(empty_db_url, ids)
    assert all(r[1] == "completed" and r[2] == 1 and r[3] == 1 for r in rows), rows
