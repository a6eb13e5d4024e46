"""A throwaway PostgreSQL 15 cluster: initdb into a scratch dir, trust auth, a free port, gone on exit.

For what the shared server at 127.0.0.1:5432 cannot give: a small ``max_connections``
(Supabase's smallest compute allows 60) that the fleet bench must live within.

    with PgServer(max_connections=60) as server:
        psycopg.connect(server.url("postgres"))
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from bench.pgprocess import SERVER_USER, LaunchFailed, ServerProcess, run_as_server_user

__all__ = ["LaunchFailed", "PgServer"]

# Debian keeps the server binaries off PATH.
PG_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"),)


def pg_binary(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise LaunchFailed(f"{name} not found in {', '.join(map(str, PG_BIN_DIRS))} or on PATH "
                           "(apt-get install -y postgresql-15)")
    return found


class PgServer(ServerProcess):
    """A PostgreSQL cluster of its own, superuser `postgres`, listening on 127.0.0.1 only."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: roll back open transactions, close clients

    def __init__(self, max_connections: int = 100, settings: dict[str, str] | None = None) -> None:
        super().__init__("ew-pgserver-")
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.data_dir = self.scratch / "data"
        self.host = "127.0.0.1"

    def url(self, dbname: str, user: str = SERVER_USER) -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    def prepare(self) -> None:
        run_as_server_user(
            [pg_binary("initdb"), "--pgdata", str(self.data_dir), "--username", SERVER_USER,
             "--auth", "trust", "--encoding", "UTF8", "--locale", "C.UTF-8", "--no-sync"],
            cwd=self.scratch,
        )

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.scratch),
            "max_connections": str(self.max_connections),
            **self.settings,
        }
        argv = [pg_binary("postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def probe_url(self) -> str:
        return self.url("postgres")
