"""The HTTP side's own database pool, the container's connection budget, and the
database part of ``/health``.

The API, event streams, /health, /metrics and the console use this pool only,
so callers can exhaust it but never the queue's. /health tells the truth about
both sides: while the queue's claims and completions, or the HTTP side's own
queries, fail, the check is degraded (still 200) and names the cause; after
DATABASE_UNHEALTHY_AFTER_SECONDS it is 503. It also states the budget of server
connections (queue + HTTP + LISTEN) and how many are open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.config import Settings
from shared.vocabulary import DatabaseEndpoint, DatabaseErrorCause
from supervisor.http.health import DATABASE_TIMEOUT_SECONDS, HealthCheck
from supervisor.queue.database import DatabaseStatus, WorkerPool, error_cause, open_pool
from supervisor.telemetry.metrics import Metrics

# Requests that may wait for one of the HTTP side's connections at once (beyond: 503 at once).
MAX_WAITING_REQUESTS = 256


@dataclass
class ConnectionBudget:
    """The server connections a container may hold, by user, and how many it holds now."""

    endpoint: DatabaseEndpoint
    queue: WorkerPool
    http: WorkerPool
    listen_open: Callable[[], int]
    listen_max: int

    @property
    def total(self) -> int:
        return int(self.queue.max_size) + int(self.http.max_size) + self.listen_max

    def details(self) -> dict[str, Any]:
        listen_open = self.listen_open()
        in_use = self.queue.open_connections() + self.http.open_connections() + listen_open
        return {
            "endpoint": self.endpoint.value,
            "connection_budget": self.total,
            "connections_in_use": in_use,
            "connections": {
                "queue": {"max": self.queue.max_size, "open": self.queue.open_connections(),
                          "busy": self.queue.busy_connections()},
                "http": {"max": self.http.max_size, "open": self.http.open_connections(),
                         "busy": self.http.busy_connections()},
                "listen": {"max": self.listen_max, "open": listen_open},
            },
        }


class HttpDatabase:
    def __init__(self, pool: WorkerPool, status: DatabaseStatus) -> None:
        self.pool = pool
        self.status = status
        # Set by the composition: the queue's status and the budget, for /health.
        self.worker: DatabaseStatus | None = None
        self.budget: ConnectionBudget | None = None

    @classmethod
    async def open(cls, conninfo: str, settings: Settings, worker_id: str, metrics: Metrics,
                   endpoint: DatabaseEndpoint) -> HttpDatabase:
        http = settings.http
        pool = await open_pool(
            conninfo,
            settings,
            endpoint=endpoint,
            max_size=http.http_db_pool_size,
            name=f"export-worker-api {worker_id}",
            timeout=http.http_db_wait_seconds,
            max_waiting=MAX_WAITING_REQUESTS,
        )
        return cls(pool, DatabaseStatus("API", pool, metrics, settings.database.database_unhealthy_after_seconds))

    def failed(self, exc: BaseException) -> None:
        """A request's query failed for a database reason: counted, and /health knows.

        All connections busy is counted only: callers can cause that, and /health
        tells it apart (``busy()``) without blaming the database.
        """
        if error_cause(exc) is DatabaseErrorCause.POOL_EXHAUSTED:
            self.status.count(exc)
        else:
            self.status.down(exc)

    async def health(self) -> HealthCheck:
        details = self.budget.details() if self.budget is not None else {}
        if not self.busy() or not self.status.ok:
            await self._probe()
        verdicts = [s.describe() for s in (self.worker, self.status) if s is not None]
        failing = [words for verdict, words in verdicts if verdict is False]
        if failing:
            return HealthCheck(False, "Database unavailable: " + "; ".join(failing), details)
        degraded = [words for verdict, words in verdicts if verdict is True]
        if degraded:
            return HealthCheck(True, "Database degraded: " + "; ".join(degraded), details)
        if self.busy():
            # Callers hold every API connection: no reason for the platform to restart
            # a worker whose own database work goes on.
            return HealthCheck(True, "Database connection OK (the API's connections are all busy)",
                               {**details, "api_pool": "busy"})
        return HealthCheck(True, "Database connection OK", details)

    async def _probe(self) -> None:
        """SELECT 1 through the pool, bounded: its outcome goes to this side's status."""
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
                async with self.pool.connection(timeout=DATABASE_TIMEOUT_SECONDS) as conn:
                    await conn.execute("SELECT 1")
        except Exception as exc:
            self.status.down(exc)
            return
        self.status.up()

    def busy(self) -> bool:
        """Every connection of the API pool is open and in use by a request.

        Not psycopg_pool's ``requests_waiting``: a request that gave up waiting stays
        counted there until a connection is handed out again, so after an outage it
        would say "busy" forever while the pool has no connection at all.
        """
        return self.pool.busy_connections() >= self.pool.max_size

    async def close(self) -> None:
        await self.pool.close()
