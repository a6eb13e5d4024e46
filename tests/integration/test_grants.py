"""Database grants, least privilege, on a Supabase-shaped database (0004_grants.sql).

The test database gets what Supabase has: the roles anon, authenticated and
service_role (BYPASSRLS), the auth schema with auth.users and auth.uid() reading
request.jwt.claims, and Supabase's default privileges (ALL on new tables, functions
and sequences in public for the three API roles). The migrations run as the
worker's own non-superuser role, or as postgres the way many Supabase projects
connect; then each function and table is checked role by role, and the real
statements an attacker would send are refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from supervisor.queue import migrate as migrate_module
from supervisor.queue.migrate import Migration, available_migrations, migrate

pytestmark = pytest.mark.timeout(300)

WORKER_ROLE = "ew_grants_worker"
API_ROLES = ("anon", "authenticated", "service_role")
OWNER = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"
PAYLOAD = json.dumps({"source": {"kind": "html", "html": "<p>x</p>"}})
# The one function an API role may execute, and the table rights each one has.
FUNCTION_GRANTS = {"create_export_job": {"service_role"}}
TABLE_GRANTS = {
    ("export_jobs", "authenticated"): {"SELECT"},
    ("export_jobs", "service_role"): {"SELECT", "INSERT"},
    ("export_queue_settings", "service_role"): {"SELECT"},
}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _create_role(conn: psycopg.Connection[Any], name: str, options: str) -> None:
    # Roles are cluster-wide; other tests may have made them already.
    with contextlib.suppress(psycopg.errors.DuplicateObject):
        conn.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name)))


def _supabase(url: str, migrator: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for role in ("anon", "authenticated"):
            _create_role(conn, role, "NOLOGIN")
        _create_role(conn, "service_role", "NOLOGIN")
        conn.execute("ALTER ROLE service_role BYPASSRLS")
        _create_role(conn, WORKER_ROLE, "LOGIN")
        conn.execute("CREATE SCHEMA auth")
        conn.execute("CREATE TABLE auth.users (id uuid PRIMARY KEY, email text)")
        conn.execute(
            "CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT nullif("
            "coalesce(current_setting('request.jwt.claim.sub', true),"
            " current_setting('request.jwt.claims', true)::jsonb ->> 'sub'), '')::uuid $$"
        )
        conn.execute("GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, " + WORKER_ROLE)
        conn.execute(f"GRANT SELECT ON auth.users TO {WORKER_ROLE}")
        conn.execute("GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role")
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {WORKER_ROLE}")
        # Supabase's own default privileges, for the role that will create the objects.
        for kind in ("TABLES", "FUNCTIONS", "SEQUENCES"):
            conn.execute(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {migrator} IN SCHEMA public "
                f"GRANT ALL ON {kind} TO anon, authenticated, service_role"
            )
        conn.execute(
            "INSERT INTO auth.users VALUES (%s, 'owner@example.com'), (%s, 'other@example.com')", (OWNER, OTHER)
        )


def _as(url: str, role: str) -> str:
    base, _, dbname = url.rpartition("/")
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{role}@{rest.split('@', 1)[-1]}/{dbname}"


@pytest.fixture(params=[WORKER_ROLE, "postgres"], ids=["own-role", "postgres"])
def supabase_db(request: pytest.FixtureRequest, empty_db_url: str) -> Iterator[tuple[str, str]]:
    migrator: str = request.param
    _supabase(empty_db_url, migrator)
    migrate(_as(empty_db_url, migrator))
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        for user in (OWNER, OTHER):
            conn.execute("SELECT id FROM create_export_job(%s, 'pdf', %s::jsonb)", (user, PAYLOAD))
    yield empty_db_url, migrator


@contextlib.contextmanager
def acting(url: str, role: str, sub: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A connection that is `role`, with `sub` in request.jwt.claims as PostgREST sets it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        if sub is not None:
            conn.execute("SELECT set_config('request.jwt.claims', %s, false)", (json.dumps({"sub": sub}),))
        yield conn


def _refused(conn: psycopg.Connection[Any], statement: str, params: tuple[Any, ...] = ()) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)


def _public_may_execute(conn: psycopg.Connection[Any], sig: str) -> bool:
    """A NULL ACL is the default one, in which PUBLIC may execute; grantee 0 is PUBLIC."""
    row = conn.execute(
        """SELECT proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(proacl) a
                                              WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
             FROM pg_proc WHERE oid = %s::regprocedure""",
        (sig,),
    ).fetchone()
    return row == (True,)


def _worker_functions(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return conn.execute(
        """SELECT p.proname, p.oid::regprocedure::text FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND (p.proname LIKE 'export\\_%' OR p.proname = 'create_export_job')
            ORDER BY 2"""
    ).fetchall()


def _worker_tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname LIKE 'export\\_%'
                ORDER BY 1"""
        )
    ]


def test_function_by_function_only_service_role_may_create(supabase_db: tuple[str, str]) -> None:
    url, _ = supabase_db
    with psycopg.connect(url) as conn:
        functions = _worker_functions(conn)
        names = {name for name, _ in functions}
        assert {"create_export_job", "export_job_recipient", "export_worker_lock_down"} <= names
        seen: dict[str, set[str]] = {}
        for name, sig in functions:
            assert not _public_may_execute(conn, sig), f"PUBLIC may execute {sig}"
            seen[name] = {
                role
                for role in API_ROLES
                if conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, sig)).fetchone() == (True,)
            }
        expected = {name: FUNCTION_GRANTS.get(name, set()) for name in seen}
        assert seen == expected


def test_table_by_table_rights_of_each_api_role(supabase_db: tuple[str, str]) -> None:
    url, _ = supabase_db
    with psycopg.connect(url) as conn:
        tables = _worker_tables(conn)
        assert {"export_jobs", "export_mail_outbox", "export_queue_settings", "export_worker_migrations"} <= set(tables)
        for table in tables:
            rls = conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()
            assert rls == (True,), f"{table} has no row-level security"
            for role in API_ROLES:
                rights = {
                    p
                    for p in TABLE_PRIVILEGES
                    if conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, p)).fetchone() == (True,)
                }
                assert rights == TABLE_GRANTS.get((table, role), set()), (table, role, rights)


def test_anon_is_refused_everything(supabase_db: tuple[str, str]) -> None:
    url, _ = supabase_db
    with acting(url, "anon") as conn:
        _refused(conn, "SELECT export_job_recipient(%s, NULL)", (OWNER,))
        _refused(conn, "SELECT * FROM create_export_job(%s, 'pdf', %s::jsonb)", (OWNER, PAYLOAD))
        _refused(conn, "SELECT * FROM export_jobs")
        _refused(conn, "SELECT * FROM export_mail_outbox")
        _refused(conn, "SELECT export_worker_lock_down()")


def test_authenticated_reads_its_own_jobs_and_writes_none(supabase_db: tuple[str, str]) -> None:
    url, _ = supabase_db
    with acting(url, "authenticated", sub=OWNER) as conn:
        rows = conn.execute("SELECT user_id::text, status FROM export_jobs").fetchall()
        assert rows == [(OWNER, "pending")]
        own = conn.execute("SELECT id FROM export_jobs").fetchone()
        assert own is not None
        _refused(conn, "UPDATE export_jobs SET status = 'completed' WHERE id = %s", (own[0],))
        _refused(conn, "DELETE FROM export_jobs WHERE id = %s", (own[0],))
        _refused(
            conn,
            "INSERT INTO export_jobs (user_id, export_type, payload) VALUES (%s, 'pdf', %s::jsonb)",
            (OWNER, PAYLOAD),
        )
        _refused(conn, "SELECT * FROM create_export_job(%s, 'pdf', %s::jsonb)", (OWNER, PAYLOAD))
        _refused(conn, "SELECT export_job_recipient(%s, NULL)", (OTHER,))
        _refused(conn, "SELECT * FROM export_queue_settings")
        _refused(conn, "UPDATE export_queue_settings SET free_user_hourly_limit = 1000000")
        _refused(conn, "SELECT * FROM export_mail_outbox")
    with psycopg.connect(url) as conn:
        statuses = conn.execute("SELECT status FROM export_jobs WHERE user_id = %s", (OWNER,)).fetchall()
        assert statuses == [("pending",)]


def test_service_role_creates_jobs_and_nothing_more(supabase_db: tuple[str, str]) -> None:
    url, _ = supabase_db
    with acting(url, "service_role") as conn:
        row = conn.execute(
            "SELECT id, status FROM create_export_job(%s, 'pdf', %s::jsonb)", (OTHER, PAYLOAD)
        ).fetchone()
        assert row is not None and row[1] == "pending"
        assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (3,)
        _refused(conn, "UPDATE export_jobs SET status = 'failed' WHERE id = %s", (row[0],))
        _refused(conn, "SELECT export_job_recipient(%s, NULL)", (OWNER,))
        _refused(conn, "SELECT * FROM export_mail_outbox")


def test_the_worker_role_keeps_every_right(supabase_db: tuple[str, str]) -> None:
    url, migrator = supabase_db
    with psycopg.connect(_as(url, migrator), autocommit=True) as conn:
        assert conn.execute("SELECT export_job_recipient(%s, NULL)", (OWNER,)).fetchone() == ("owner@example.com",)
        updated = conn.execute(
            "UPDATE export_jobs SET status = 'processing' WHERE user_id = %s RETURNING id", (OWNER,)
        ).fetchall()
        assert len(updated) == 1


def test_later_migrations_are_locked_down_too(supabase_db: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, migrator = supabase_db
    later = Migration(
        "9990_later",
        "CREATE TABLE export_later (id int PRIMARY KEY, secret text);"
        "CREATE FUNCTION export_later_peek() RETURNS text LANGUAGE sql SECURITY DEFINER AS $$ SELECT 'x' $$;",
    )
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: [*available_migrations(), later])
    assert migrate(_as(url, migrator)) == ["9990_later"]
    with acting(url, "authenticated", sub=OWNER) as conn:
        _refused(conn, "SELECT export_later_peek()")
        _refused(conn, "SELECT * FROM export_later")
    with acting(url, "anon") as conn:
        _refused(conn, "SELECT export_later_peek()")
        _refused(conn, "INSERT INTO export_later VALUES (1, 'y')")


def test_functions_created_later_by_the_worker_role_start_revoked(supabase_db: tuple[str, str]) -> None:
    """Default privileges: on the worker's own role, outside any migration too.

    As postgres (the web app's role on Supabase) they are left as Supabase set them:
    the app's own later functions stay callable by its API roles.
    """
    url, migrator = supabase_db
    if migrator == "postgres":
        with psycopg.connect(url) as conn:
            defaults = conn.execute(
                """SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a
                    WHERE d.defaclrole = 'postgres'::regrole AND d.defaclobjtype = 'f'
                      AND a.grantee IN ('anon'::regrole, 'authenticated'::regrole) AND a.privilege_type = 'EXECUTE'"""
            ).fetchone()
        assert defaults == (2,)
        return
    with psycopg.connect(_as(url, migrator), autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.made_later() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$")
        conn.execute("CREATE TABLE public.made_later_t (id int)")
    with psycopg.connect(url) as conn:
        for role in API_ROLES:
            assert conn.execute(
                "SELECT has_function_privilege(%s, 'public.made_later()', 'EXECUTE')", (role,)
            ).fetchone() == (False,), role
            assert conn.execute(
                "SELECT has_table_privilege(%s, 'public.made_later_t', 'SELECT')", (role,)
            ).fetchone() == (False,), role


def test_plain_postgres_new_functions_are_not_public(empty_db_url: str) -> None:
    """Without Supabase: the worker's functions and later ones are not PUBLIC's to execute."""
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION made_later() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$")
        assert not _public_may_execute(conn, "made_later()")
        for _, sig in _worker_functions(conn):
            assert not _public_may_execute(conn, sig), sig
