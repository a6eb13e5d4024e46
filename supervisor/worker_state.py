"""What this worker is doing now, read from its parts: the one claim gate, and the
snapshot the workers table and the console show.

The gate names why nothing is claimed (:class:`NotClaiming`); the claim loop, the
workers table and the console all ask it, so they can never disagree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shared.config import Settings
from supervisor.delivery.breaker import CircuitBreaker
from supervisor.pool.render_pool import RenderPool
from supervisor.pool.watchdog import Watchdog
from supervisor.queue.database import DatabaseStatus
from supervisor.queue.workers import ChildInfo, NotClaiming, WorkerDetail, WorkerRegistry, WorkerSnapshot

log = logging.getLogger(__name__)


class ClaimGate:
    """May this worker claim now, and if not, why. The one owner of that decision."""

    def __init__(self, settings: Settings, pool: RenderPool, watchdog: Watchdog, database: DatabaseStatus,
                 stopping: Callable[[], bool]) -> None:
        self.canary_gates = settings.worker.enable_canary_export
        self.pool = pool
        self.watchdog = watchdog
        self.database = database
        self.stopping = stopping

    def not_claiming(self) -> NotClaiming | None:
        if self.stopping():
            return NotClaiming.SHUTTING_DOWN
        if not self.database.ok:
            return NotClaiming.DATABASE
        if self.pool.brake.engaged:
            return NotClaiming.BRAKE
        if self.watchdog.over_high_water:
            return NotClaiming.HIGH_WATER
        if self.canary_gates and self.pool.last_canary_ok is False:
            return NotClaiming.CANARY
        return None

    def may_claim(self) -> bool:
        # The claim loop still claims while the database is away: a claim that succeeds
        # is how it finds the database back, within one poll of its return.
        return self.not_claiming() in (None, NotClaiming.DATABASE)


class WorkerState:
    """This worker's row in the workers table, read live from its parts."""

    def __init__(self, worker_id: str, gate: ClaimGate, breaker: CircuitBreaker, registry: WorkerRegistry) -> None:
        self.worker_id = worker_id
        self.gate = gate
        self.breaker = breaker
        self.registry = registry

    def snapshot(self) -> WorkerSnapshot:
        pool, registry = self.gate.pool, self.registry
        now = time.monotonic()
        children = [
            ChildInfo(
                name=h.name,
                pid=h.pid,
                state=h.state.value,
                renders=h.renders,
                age_seconds=round(now - h.spawned_at, 1),
                memory_bytes=h.memory_bytes,
                job_id=next(iter(h.assignments), None),
            )
            for h in sorted(pool.handles, key=lambda h: (h.index, h.generation))
        ]
        kills = dict(pool.stats.kills)
        container = self.gate.watchdog.container
        reason = self.gate.not_claiming()
        return WorkerSnapshot(
            worker_id=self.worker_id,
            host=registry.host,
            pid=registry.pid,
            version=registry.version,
            started_at=registry.started_at,
            children_ready=len(pool.idle_children()),
            children_busy=len(pool.busy_children()),
            capacity=pool.config.size,
            children_memory_bytes=sum(c.memory_bytes for c in children),
            container_memory_bytes=container.used_bytes if container is not None else None,
            container_limit_bytes=container.limit_bytes if container is not None else None,
            claiming=reason is None,
            not_claiming=reason,
            canary_ok=pool.last_canary_ok,
            breaker_state=self.breaker.state if self.breaker.enabled else "disabled",
            detail=WorkerDetail(children=children, kills=kills, recent_kills=registry.kill_log.observe(kills)),
        )

    async def beat_loop(self, interval_seconds: float) -> None:
        """This worker's row in the workers table (the console and operators read it)."""
        while True:
            await self.beat()
            await asyncio.sleep(interval_seconds)

    async def beat(self) -> bool:
        """Read the parts and beat; a failure here is logged and never stops the caller's loop."""
        try:
            snapshot = self.snapshot()
        except Exception:
            log.exception("could not read this worker's state for the workers table")
            return False
        return await self.registry.beat(snapshot)
