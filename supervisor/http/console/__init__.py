"""The operator console at /console (off unless CONSOLE_KEYS is set).

``console_app(settings, pool, local=...)`` builds the Starlette app to mount. Its
queries run on the pool it is given, which must not be the worker's claim and
heartbeat pool: :func:`own_pool` is a factory of a small pool of its own (opened
on the first request), or the HTTP side's pool can be handed in instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from shared.config import Settings
from supervisor.delivery.links import Signs
from supervisor.http.console.app import Console, LocalSnapshot
from supervisor.http.console.store import PoolSource
from supervisor.queue.database import open_pool

CONSOLE_POOL_MAX = 2  # a few operators' page loads; live streams share one cached counts query


def own_pool(conninfo: str, settings: Settings) -> Callable[[], Awaitable[AsyncConnectionPool[Any]]]:
    """A factory of the console's own pool, called on the console's first request."""

    async def factory() -> AsyncConnectionPool[Any]:
        return await open_pool(conninfo, settings, max_size=CONSOLE_POOL_MAX, name="export-worker console")

    return factory


def console_app(
    settings: Settings, pool: PoolSource, *, local: LocalSnapshot | None = None, storage: Signs | None = None
) -> Starlette:
    return Console(settings, pool, local=local, storage=storage).app()


__all__ = ["Console", "LocalSnapshot", "console_app", "own_pool"]
