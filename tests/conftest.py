"""Shared fixtures: a real PostgreSQL, one fresh database per test from a migrated template.

The suite runs in parallel (pytest-xdist, `make test`) and beside other copies of itself
against the same PostgreSQL (`make test-stress`, CI, other engineers). Rules every test follows:
- its own database: the `db_url` fixture (copied from this worker's template) or `empty_db_url`;
  never a fixed database name, never DROP what it did not create;
- any server-wide view (pg_stat_activity, pg_locks, pg_stat_*) filtered to
  `datname = current_database()` (and the application_name it counts);
- ports from the OS (bind to port 0: `free_port()` in tests/acceptance/serving.py), files
  under `tmp_path` (one directory per test and per xdist worker), nothing written in the checkout
  but build/;
- no wall-clock budget: await the event with a generous timeout; to tell two causes apart,
  set the other cause's setting beyond that timeout. Speeds are `export-worker bench` goals;
- a test that cannot share the machine (it measures the whole machine, or holds something
  global) is marked `@pytest.mark.serial("why")`: `make test` runs those alone, after the rest.
Before any test runs, tests/environment.py checks PostgreSQL, Chromium, the fonts and the
optional tools, and names the command that fixes what is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings, load_settings
from supervisor.queue.database import open_pool
from supervisor.queue.jobs import JobQueue
from supervisor.queue.migrate import migrate, sync_queue_settings
from tests import environment

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
CHILD_BOOT_TIMEOUT_SECONDS = "180"


def _url_for(dbname: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Once: in xdist's controller, or a plain run; not again in run-tests.sh's serial pass.
    if not hasattr(session.config, "workerinput") and not os.environ.get("TESTS_ENVIRONMENT_CHECKED"):
        environment.check(session.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        environment.fail_on_skips(session)


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    # One per process, so one per xdist worker (each is its own process) and per suite copy:
    # CREATE DATABASE ... TEMPLATE needs a template no other session is using.
    name = f"ew_template_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(_url_for(name))
    yield name
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test (copied from the template)."""
    name = f"ew_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _url_for(name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"ew_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _url_for(name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(tmp_path: Path, db_url: str = "", **env: str) -> Settings:
    environ = {"EXPORT_WORKER_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": db_url,
               # A child gets 3 minutes to boot (30 s in production): on a busy machine Chromium takes
               # longer than 30 s to start, and the pool would kill it as a boot failure.
               "CHILD_BOOT_TIMEOUT_SECONDS": CHILD_BOOT_TIMEOUT_SECONDS}
    environ.update(env)
    return load_settings(path=ROOT / "config.toml", environ=environ)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    s = make_settings(tmp_path, db_url)
    sync_queue_settings(db_url, s)
    return s


@pytest.fixture
async def pool(db_url: str, settings: Settings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p = await open_pool(db_url, settings, max_size=10)
    yield p
    await p.close()


@pytest.fixture
async def queue(pool: AsyncConnectionPool[Any], settings: Settings) -> JobQueue:
    return JobQueue(pool, "test-worker", settings.retry)


def html_payload(html: str = "<h1>hello</h1>") -> dict[str, Any]:
    return {"source": {"kind": "html", "html": html}}
