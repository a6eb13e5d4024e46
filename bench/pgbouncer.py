"""Debian's PgBouncer (1.18) configured like Supabase's pooler, for tests and the fleet bench.

The ini follows Supabase's own pgbouncer.ini where it matters to a client:
``ignore_startup_parameters = extra_float_digits`` (so ``options`` and every other
startup parameter is refused, as there), and one pool per database/user of
``default_pool_size`` server connections. Every database name is routed to the
upstream server (``* =``). Authentication is ``trust`` against an auth_file that
lists the users (PgBouncer's trust still requires the user to be listed), matching
a trust local server.

    with PgBouncer(upstream_port=5432, pool_mode=PoolMode.TRANSACTION, default_pool_size=5) as bouncer:
        psycopg.connect(bouncer.url("mydb"), prepare_threshold=None)

Runs as user `postgres` when we are root (``apt-get install -y pgbouncer`` if missing).
"""

from __future__ import annotations

import enum
import shutil
import signal
from collections.abc import Sequence
from typing import Any

import psycopg

from bench.pgprocess import SERVER_USER, LaunchFailed, ServerProcess

__all__ = ["LaunchFailed", "PgBouncer", "PoolMode", "admin_show"]

ADMIN_DATABASE = "pgbouncer"


class PoolMode(enum.Enum):
    """When a server connection goes back to the pool (PgBouncer's ``pool_mode``)."""

    SESSION = "session"  # when the client disconnects
    TRANSACTION = "transaction"  # after every transaction (Supabase's port 6543)


def admin_show(admin: psycopg.Connection[Any], command: str) -> list[dict[str, str]]:
    """A SHOW on PgBouncer's admin console, one dict per row (column name to text).

    The console speaks the simple query protocol only; psycopg's execute uses the
    extended one, hence the libpq-level call.
    """
    result = admin.pgconn.exec_(command.encode())
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    return [{names[c]: (result.get_value(r, c) or b"").decode() for c in range(result.nfields)}
            for r in range(result.ntuples)]


def pgbouncer_binary() -> str:
    for candidate in ("/usr/sbin/pgbouncer", shutil.which("pgbouncer")):
        if candidate and shutil.which(candidate):
            return candidate
    raise LaunchFailed("pgbouncer not found (apt-get install -y pgbouncer)")


class PgBouncer(ServerProcess):
    """One PgBouncer on 127.0.0.1 (a port from the OS) in front of one PostgreSQL server."""

    name = "pgbouncer"
    stop_signal = signal.SIGTERM  # immediate shutdown (SIGINT would wait for clients to leave)

    def __init__(
        self,
        *,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        pool_mode: PoolMode = PoolMode.TRANSACTION,
        default_pool_size: int = 20,
        max_client_conn: int = 1000,
        users: Sequence[str] = (SERVER_USER,),
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__("ew-pgbouncer-")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.users = tuple(users)
        if SERVER_USER not in self.users:
            self.users += (SERVER_USER,)  # the start-up probe and the admin console log in as it
        self.extra_settings = dict(extra_settings or {})
        self.host = "127.0.0.1"
        self.ini_path = self.scratch / "pgbouncer.ini"

    def url(self, dbname: str, user: str = SERVER_USER) -> str:
        """A client URL through the pooler; ``dbname="pgbouncer"`` is the admin console."""
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    def admin_url(self) -> str:
        """The admin console (SHOW POOLS, SHOW SERVERS); it speaks the simple query protocol only."""
        return self.url(ADMIN_DATABASE)

    def show(self, command: str) -> list[dict[str, str]]:
        """One admin console SHOW (POOLS, SERVERS, CLIENTS, CONFIG...) on a connection of its own."""
        with psycopg.connect(self.admin_url(), autocommit=True) as admin:
            return admin_show(admin, command)

    def ini(self) -> str:
        settings = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            "unix_socket_dir": str(self.scratch),
            "auth_type": "trust",
            "auth_file": str(self.scratch / "userlist.txt"),
            "admin_users": SERVER_USER,
            "stats_users": SERVER_USER,
            "pool_mode": self.pool_mode.value,
            "default_pool_size": str(self.default_pool_size),
            "max_client_conn": str(self.max_client_conn),
            # As Supabase's: drivers that send extra_float_digits (JDBC, asyncpg) may connect;
            # anything else in the startup packet (``options``) is refused.
            "ignore_startup_parameters": "extra_float_digits",
            **self.extra_settings,
        }
        lines = ["[databases]", f"* = host={self.upstream_host} port={self.upstream_port}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        self.ini_path.write_text(self.ini())
        (self.scratch / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in self.users))

    def command(self) -> list[str]:
        return [pgbouncer_binary(), str(self.ini_path)]

    def probe_url(self) -> str:
        # Through the pooler to the upstream: proves both are up and the route works.
        return self.url("postgres")
