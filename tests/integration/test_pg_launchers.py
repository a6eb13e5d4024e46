"""The bench's server launchers: a throwaway PostgreSQL and a PgBouncer in front of one."""

from __future__ import annotations

import psycopg
import pytest

from bench.pgbouncer import LaunchFailed, PgBouncer, PoolMode
from bench.pgserver import PgServer
from tests.conftest import ADMIN_URL

SHARED_PORT = int(psycopg.conninfo.conninfo_to_dict(ADMIN_URL).get("port") or 5432)


def test_pgserver_runs_with_its_own_max_connections() -> None:
    with PgServer(max_connections=60) as server, psycopg.connect(server.url("postgres")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW max_connections").fetchone() == ("60",)
        assert conn.info.port == server.port
    assert not server.scratch.exists()


@pytest.mark.parametrize("mode", list(PoolMode))
def test_pgbouncer_pools_to_the_shared_server(mode: PoolMode) -> None:
    with PgBouncer(upstream_port=SHARED_PORT, pool_mode=mode,
                   default_pool_size=3) as bouncer:
        with psycopg.connect(bouncer.url("postgres"), prepare_threshold=None) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pools = [p for p in bouncer.show("SHOW POOLS") if p["database"] == "postgres"]
        assert [p["pool_mode"] for p in pools] == [mode.value]
        config = {row["key"]: row["value"] for row in bouncer.show("SHOW CONFIG")}
        assert config["default_pool_size"] == "3"
        assert config["ignore_startup_parameters"] == "extra_float_digits"


def test_pgbouncer_refuses_startup_options_like_supabase() -> None:
    with PgBouncer(upstream_port=SHARED_PORT) as bouncer, \
            pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(bouncer.url("postgres"), options="-c statement_timeout=1000")


def test_a_failed_start_names_the_cause_from_the_servers_log() -> None:
    bouncer = PgBouncer(upstream_port=SHARED_PORT,
                        extra_settings={"pool_mode_typo": "transaction"})
    with pytest.raises(LaunchFailed, match="pool_mode_typo"):
        bouncer.__enter__()
    assert not bouncer.scratch.exists()
