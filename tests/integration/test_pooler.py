"""The worker's database connections through a real PgBouncer 1.18 configured like
Supabase's pooler (bench/pgbouncer.py: ``ignore_startup_parameters = extra_float_digits``).

Issue 21: nothing may rely on session state behind a transaction pooler (startup
``options``, prepared statements, session advisory locks, plain SET, LISTEN), the
statement timeout still applies, migrate runs concurrently, the endpoint kind is
detected, and the LISTEN round trip tells when notifications do not arrive.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.pgbouncer import PgBouncer, PoolMode
from shared.vocabulary import DatabaseEndpoint, DatabaseErrorCause
from supervisor.composition import start_listener
from supervisor.queue import database
from supervisor.queue.database import BlockMode, detect_endpoint, error_cause, open_pool
from supervisor.queue.jobs import JobQueue
from supervisor.queue.listener import Listener
from supervisor.queue.migrate import available_migrations
from tests.conftest import ADMIN_URL, ROOT, html_payload, make_settings

pytestmark = pytest.mark.timeout(90)

SERVER_PORT = int(psycopg.conninfo.conninfo_to_dict(ADMIN_URL).get("port") or 5432)
POOL_SIZE = 5  # Supabase's smallest pooler size


def _dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@pytest.fixture(scope="module")
def transaction_bouncer() -> Iterator[PgBouncer]:
    with PgBouncer(upstream_port=SERVER_PORT, pool_mode=PoolMode.TRANSACTION, default_pool_size=POOL_SIZE) as b:
        yield b


@pytest.fixture(scope="module")
def session_bouncer() -> Iterator[PgBouncer]:
    with PgBouncer(upstream_port=SERVER_PORT, pool_mode=PoolMode.SESSION, default_pool_size=POOL_SIZE) as b:
        yield b


async def test_statement_timeout_cuts_a_slow_statement_through_a_transaction_pooler(
    transaction_bouncer: PgBouncer, db_url: str, tmp_path: Path
) -> None:
    url = transaction_bouncer.url(_dbname(db_url))
    settings = make_settings(tmp_path, url, STATEMENT_TIMEOUT_MS="300")
    pool = await open_pool(url, settings, max_size=2)  # before: "unsupported startup parameter: options"
    try:
        async with pool.connection() as conn:
            cur = await conn.execute("SHOW statement_timeout")
            assert await cur.fetchone() == ("300ms",)
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")
        # The setting was the transaction's only: nothing is left on the pooled server connection.
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as plain:
            assert plain.execute("SHOW statement_timeout").fetchone() == ("0",)
        # Each block is one transaction, committed when it ends.
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE pooled_commit (x int)")
            await conn.execute("INSERT INTO pooled_commit VALUES (1)")
        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO pooled_commit VALUES (2)")
                raise ZeroDivisionError
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT array_agg(x) FROM pooled_commit")
            assert await cur.fetchone() == ([1],)
    finally:
        await pool.close()


async def test_many_concurrent_queue_calls_through_a_transaction_pooler_never_mix_statements(
    transaction_bouncer: PgBouncer, db_url: str, tmp_path: Path
) -> None:
    """Before: automatic prepared statements gave '_pg3_0 does not exist' and another client's results."""
    url = transaction_bouncer.url(_dbname(db_url))
    settings = make_settings(tmp_path, url)
    pools = [await open_pool(url, settings, max_size=3) for _ in range(3)]
    try:
        queues = [JobQueue(p, f"w{i}", settings.retry) for i, p in enumerate(pools)]

        async def create(n: int) -> str:
            job = await queues[n % 3].create_job(
                user_id=f"00000000-0000-4000-8000-{n:012d}", export_type="pdf", payload=html_payload()
            )
            for _ in range(6):  # past psycopg's prepare threshold (5) on the same connections
                assert (await queues[n % 3].get_job(str(job["id"]))) is not None
            return str(job["id"])

        ids = await asyncio.gather(*(create(n) for n in range(50)))
        assert len(set(ids)) == 50
        claimed = [c for q in queues for c in await q.claim(20)]
        assert len({c.job_id for c in claimed}) == len(claimed) == 50
    finally:
        for p in pools:
            await p.close()


def test_four_concurrent_migrations_through_a_transaction_pooler_all_succeed_once(
    transaction_bouncer: PgBouncer, empty_db_url: str, tmp_path: Path
) -> None:
    url = transaction_bouncer.url(_dbname(empty_db_url))
    env = {"DATABASE_URL": url, "EXPORT_WORKER_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    runs = [
        subprocess.Popen([str(ROOT / ".venv/bin/export-worker"), "migrate"], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    assert sum("applied" in out and "migration(s)" in out for out in outputs) == 1, outputs
    with psycopg.connect(empty_db_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM export_worker_migrations ORDER BY name")]
        held = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = %s", (_dbname(empty_db_url),)
        ).fetchone()
    assert names == [m.name for m in available_migrations()]
    assert held == (0,)  # no lock left behind on a pooled backend


async def test_the_endpoint_kind_is_detected(
    transaction_bouncer: PgBouncer, session_bouncer: PgBouncer, db_url: str, tmp_path: Path
) -> None:
    name = _dbname(db_url)
    settings = make_settings(tmp_path, db_url)
    assert (await detect_endpoint(db_url, settings))[0] is DatabaseEndpoint.DIRECT
    assert (await detect_endpoint(session_bouncer.url(name), settings))[0] is DatabaseEndpoint.SESSION
    assert (await detect_endpoint(transaction_bouncer.url(name), settings))[0] is DatabaseEndpoint.TRANSACTION
    forced = make_settings(tmp_path, db_url, DATABASE_MODE="transaction")
    assert await detect_endpoint(db_url, forced) == (DatabaseEndpoint.TRANSACTION, "DATABASE_MODE")


async def test_listen_round_trip_fails_through_a_transaction_pooler_and_the_worker_polls(
    transaction_bouncer: PgBouncer, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = transaction_bouncer.url(_dbname(db_url))
    settings = make_settings(tmp_path, url)
    # The check itself: a NOTIFY to ourselves does not come back through the pooler.
    assert await Listener(url, settings).round_trip() is not None
    assert await Listener(db_url, settings).round_trip() is None
    caplog.set_level(logging.WARNING)
    # DATABASE_MODE forced to session: the worker tries LISTEN on DATABASE_URL, the round trip fails.
    forced = make_settings(tmp_path, url, DATABASE_MODE="session")
    assert await start_listener(forced, url, DatabaseEndpoint.SESSION) is None
    # Detected as a transaction pooler: no LISTEN attempted, one warning.
    assert await start_listener(settings, url, DatabaseEndpoint.TRANSACTION) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("DATABASE_LISTEN_URL" in w for w in warnings), warnings
    # With DATABASE_LISTEN_URL (direct), LISTEN works whatever DATABASE_URL is.
    with_listen = make_settings(tmp_path, url, DATABASE_LISTEN_URL=db_url)
    listener = await start_listener(with_listen, url, DatabaseEndpoint.TRANSACTION)
    assert listener is not None and listener.conninfo == db_url


def test_errors_are_named_by_cause() -> None:
    from psycopg_pool import PoolTimeout

    def failure(url: str) -> BaseException:
        try:
            psycopg.connect(url, connect_timeout=2).close()
        except psycopg.Error as exc:
            return exc
        raise AssertionError(f"{url} connected")

    closed = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    assert error_cause(failure(closed)) is DatabaseErrorCause.REFUSED
    base = ADMIN_URL.rsplit("@", 1)[1]
    assert error_cause(failure(f"postgresql://no_such_role_ew@{base}")) is DatabaseErrorCause.AUTHENTICATION
    assert error_cause(PoolTimeout("couldn't get a connection after 3.00 sec")) is DatabaseErrorCause.POOL_EXHAUSTED
    assert error_cause(psycopg.OperationalError("prepared statement \"_pg3_0\" does not exist")) is \
        DatabaseErrorCause.PROTOCOL
    assert error_cause(TimeoutError()) is DatabaseErrorCause.TIMEOUT


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_pool_on_a_direct_connection_sets_the_timeout_once_and_each_statement_commits(
    session_bouncer: PgBouncer, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One round trip per statement, not BEGIN; SET LOCAL + COMMIT; through any pooler, the blocks stay."""
    settings = make_settings(tmp_path, db_url, STATEMENT_TIMEOUT_MS="300")
    session = session_bouncer.url(_dbname(db_url))
    behind_pooler = await open_pool(session, settings, endpoint=(await detect_endpoint(session, settings))[0])
    assert behind_pooler.mode is BlockMode.TRANSACTION  # a session pooler may be a misdetected transaction pooler
    await behind_pooler.close()
    endpoint, _ = await detect_endpoint(db_url, settings)
    pool = await open_pool(db_url, settings, endpoint=endpoint, max_size=1)
    caplog.set_level(logging.WARNING)

    async def one(conn: psycopg.AsyncConnection[Any], sql: str) -> Any:
        row = await (await conn.execute(sql)).fetchone()
        assert row is not None
        return row[0]

    try:
        assert pool.mode is BlockMode.AUTOCOMMIT
        async with pool.connection() as conn:
            assert await one(conn, "SHOW statement_timeout") == "300ms"
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")
        async with pool.connection() as conn:
            # Each statement is a transaction of its own ...
            assert await one(conn, "SELECT pg_current_xact_id()") != await one(conn, "SELECT pg_current_xact_id()")
            # ... and a block that needs several to be atomic says so.
            async with conn.transaction():
                assert await one(conn, "SELECT pg_current_xact_id()") == await one(conn, "SELECT pg_current_xact_id()")
            assert await one(conn, "SHOW statement_timeout") == "300ms"  # still, after the timeout cancelled one
    finally:
        await pool.close()
    # No block leaves its connection mid-transaction (psycopg_pool warns when it must roll one back).
    assert not [r.getMessage() for r in caplog.records if "rolling back" in r.getMessage()]


async def test_a_connection_the_server_dropped_is_replaced_inside_and_past_the_bypass_window(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside the window the server's goodbye on the socket triggers the check; past it, the age does."""
    settings = make_settings(tmp_path, db_url)
    pool = await open_pool(db_url, settings, endpoint=DatabaseEndpoint.DIRECT, max_size=1)

    async def backend() -> int:
        async with pool.connection() as conn:
            row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        return int(row[0])

    def terminate(pid: int) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:  # waits until the backend has exited
            assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)

    try:
        seen = [await backend()]
        for window in (math.inf, -1.0):  # always inside the window; always past it
            monkeypatch.setattr(database, "ALIVE_BYPASS_SECONDS", window)
            terminate(seen[-1])
            seen.append(await backend())  # a live connection, no error for the caller
        assert len(set(seen)) == 3
    finally:
        await pool.close()


async def test_direct_is_said_only_when_a_startup_parameter_reaches_the_server(
    transaction_bouncer: PgBouncer, db_url: str, tmp_path: Path
) -> None:
    """A pooler on the server's own port that lends its server connections round robin looks
    direct by pid and port, and a plain SET through it would reach other clients. The probe
    (a timeout sent as the startup parameter ``options``) tells it apart: PostgreSQL applies
    it; Supabase's PgBouncer refuses it; one told to ignore it drops it."""
    settings = make_settings(tmp_path, db_url)
    kwargs = database.connection_kwargs(settings, "export-worker-test")
    timeout = settings.database.statement_timeout_ms
    assert await detect_endpoint(db_url, settings) == (
        DatabaseEndpoint.DIRECT, "each client connection has its own server connection on the URL's port")
    assert await database.startup_parameter_refused(db_url, kwargs, timeout) == ""
    refusing = transaction_bouncer.url(_dbname(db_url))
    why = await database.startup_parameter_refused(refusing, kwargs, timeout)
    assert why.startswith("the startup parameter options was refused") and "unsupported startup parameter" in why
    with PgBouncer(upstream_port=SERVER_PORT, pool_mode=PoolMode.TRANSACTION, default_pool_size=POOL_SIZE,
                   extra_settings={"ignore_startup_parameters": "extra_float_digits,options"}) as dropping:
        assert await database.startup_parameter_refused(dropping.url(_dbname(db_url)), kwargs, timeout) == (
            "the startup parameter options did not reach the server")


async def test_database_mode_direct_through_a_pooler_stops_the_start_with_the_fix_named(
    transaction_bouncer: PgBouncer, db_url: str, tmp_path: Path
) -> None:
    """Forced direct puts the timeout in every connection's startup packet: a pooler must be
    named at start (exit 2, bad configuration), not fail every later connection."""
    url = transaction_bouncer.url(_dbname(db_url))
    forced = make_settings(tmp_path, url, DATABASE_MODE="direct")
    with pytest.raises(database.BadDatabaseMode, match="DATABASE_MODE=direct, but DATABASE_URL is not a direct"):
        await detect_endpoint(url, forced)
    with socket.socket() as spare:  # nothing binds it: the start stops before the HTTP server
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    env = {"DATABASE_URL": url, "DATABASE_MODE": "direct", "EXPORT_WORKER_DATA_DIR": str(tmp_path / "data"),
           "PORT": str(port), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(ROOT / ".venv/bin/export-worker"), "serve"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "set DATABASE_MODE=transaction" in run.stderr, run.stderr[-2000:]


async def test_a_server_that_is_down_is_not_taken_for_a_pooler(tmp_path: Path) -> None:
    """The probe reports a refused parameter only; a refused connection stays the caller's error."""
    settings = make_settings(tmp_path)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(psycopg.OperationalError, match="refused"):
            await database.startup_parameter_refused(
                f"postgresql://postgres@127.0.0.1:{port}/postgres", database.connection_kwargs(settings, "t"),
                settings.database.statement_timeout_ms)
