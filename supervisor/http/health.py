"""``GET /health``: the seed's JSON shape, from checks the supervisor already knows.

The report never launches a browser or touches the file store: the database gets
one ``SELECT 1`` (bounded at 2 s), everything else is state the supervisor keeps
anyway (breaker state, the pool's children and canary, container memory).

Shape (the seed's README, more keys allowed inside each check)::

    {"status": "healthy", "timestamp": "2026-01-30T12:00:00.000Z",
     "checks": {"database": {"healthy": true, "message": "Database connection OK"},
                "storage":  {...}, "puppeteer": {...}, "memory": {...}}}
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from psycopg_pool import AsyncConnectionPool

from supervisor.pool.sandbox import SandboxProbe

DATABASE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class HealthCheck:
    healthy: bool
    message: str
    details: dict[str, Any] | None = field(default=None)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"healthy": self.healthy, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


@runtime_checkable
class HealthSources(Protocol):
    """What the supervisor tells /health. Only ``database`` may do I/O (bounded).

    The storage check is ``storage_health`` (not ``storage``): the supervisor that
    implements this protocol already has a ``storage`` attribute, its Storage.
    """

    async def database(self) -> HealthCheck: ...

    def storage_health(self) -> HealthCheck: ...

    def render_pool(self) -> HealthCheck: ...

    def memory(self) -> HealthCheck: ...


def utc_timestamp(now: datetime | None = None) -> str:
    """ISO 8601 in UTC with milliseconds and a Z: ``2026-01-30T12:00:00.000Z``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- ready-made checks the supervisor can compose ------------------------------


async def database_check(
    pool: AsyncConnectionPool[Any] | None, timeout: float = DATABASE_TIMEOUT_SECONDS
) -> HealthCheck:
    """``SELECT 1`` through the pool, at most `timeout` seconds in all."""
    if pool is None:
        return HealthCheck(False, "Database pool is not open")
    started = time.monotonic()

    async def probe() -> None:
        async with pool.connection(timeout=timeout) as conn:
            await conn.execute("SELECT 1")

    try:
        await asyncio.wait_for(probe(), timeout)
    except TimeoutError:
        return HealthCheck(False, f"Database check timed out after {timeout:g}s")
    except Exception as exc:
        return HealthCheck(False, f"Database connection failed: {type(exc).__name__}: {exc}".strip())
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return HealthCheck(True, "Database connection OK", {"latency_ms": elapsed_ms})


def breaker_check(
    state: str | None, *, backend: str = "storage", retry_in: float | None = None
) -> HealthCheck:
    """Storage health from the circuit breaker: unhealthy only while it is open."""
    if state is None or state == "closed":
        return HealthCheck(
            True, "Storage connection OK", {"backend": backend, "breaker": state or "disabled"}
        )
    if state == "half_open":
        return HealthCheck(
            True, "Storage connection OK (breaker half-open, probing)", {"backend": backend, "breaker": state}
        )
    details: dict[str, Any] = {"backend": backend, "breaker": state}
    if retry_in is not None:
        details["retry_in_seconds"] = round(retry_in, 1)
    return HealthCheck(False, "Storage circuit breaker is open after repeated failures", details)


def memory_check(ratio: float, critical_ratio: float, *, source: str | None = None) -> HealthCheck:
    """``Memory usage: 45.2%``; unhealthy at or above the critical ratio."""
    percent = ratio * 100
    details: dict[str, Any] = {"critical_percent": round(critical_ratio * 100, 1)}
    if source:
        details["source"] = source
    if ratio >= critical_ratio:
        return HealthCheck(False, f"Memory usage: {percent:.1f}% (critical)", details)
    return HealthCheck(True, f"Memory usage: {percent:.1f}%", details)


@dataclass
class CallbackHealthSources:
    """A :class:`HealthSources` from a pool and three callables (handy for the supervisor and tests).

    ``database`` is :func:`database_check` on ``pool`` unless ``database_fn`` replaces it.
    """

    pool: AsyncConnectionPool[Any] | None
    storage_fn: Callable[[], HealthCheck] = field(default=lambda: breaker_check(None))
    render_pool_fn: Callable[[], HealthCheck] = field(default=lambda: HealthCheck(True, "Puppeteer OK"))
    memory_fn: Callable[[], HealthCheck] = field(default=lambda: HealthCheck(True, "Memory usage: unknown"))
    database_fn: Callable[[], Awaitable[HealthCheck]] | None = None
    database_timeout: float = DATABASE_TIMEOUT_SECONDS

    async def database(self) -> HealthCheck:
        if self.database_fn is not None:
            return await self.database_fn()
        return await database_check(self.pool, self.database_timeout)

    def storage_health(self) -> HealthCheck:
        return self.storage_fn()

    def render_pool(self) -> HealthCheck:
        return self.render_pool_fn()

    def memory(self) -> HealthCheck:
        return self.memory_fn()


# ---- the report ----------------------------------------------------------------


def with_sandbox(check: HealthCheck, probe: SandboxProbe) -> HealthCheck:
    """The puppeteer check with Chromium's sandbox mode (supervisor/pool/sandbox.py) in its details."""
    details = {**(check.details or {}), "chromium_sandbox": probe.mode.value, "chromium_sandbox_reason": probe.reason}
    return HealthCheck(check.healthy, check.message, details)


def _guard(name: str, fn: Callable[[], HealthCheck]) -> HealthCheck:
    try:
        result = fn()
    except Exception as exc:
        return HealthCheck(False, f"{name} check failed: {type(exc).__name__}: {exc}")
    if inspect.isawaitable(result):  # a source that got the protocol wrong
        if hasattr(result, "close"):
            result.close()
        return HealthCheck(False, f"{name} check is not synchronous")
    return result


async def health_report(sources: HealthSources) -> tuple[int, dict[str, Any]]:
    """(status code, body): 200 when every check is healthy, else 503."""
    try:
        database = await sources.database()
    except Exception as exc:
        database = HealthCheck(False, f"Database check failed: {type(exc).__name__}: {exc}")
    checks = {
        "database": database,
        "storage": _guard("Storage", sources.storage_health),
        "puppeteer": _guard("Puppeteer", sources.render_pool),
        "memory": _guard("Memory", sources.memory),
    }
    healthy = all(c.healthy for c in checks.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": utc_timestamp(),
        "checks": {name: check.as_json() for name, check in checks.items()},
    }
    return (200 if healthy else 503), body
