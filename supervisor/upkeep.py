"""The supervisor's periodic work, one loop per concern, each run by the TaskOwner.

Failure policy per loop (see supervisor/tasks.py): the pool tick is FATAL (without
it nothing is reaped or topped up, so a worker whose tick broke must be restarted
by the platform); every other loop is RESTART (its work is retried next round and
a broken round must not take rendering down).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.vocabulary import JobStatus, KillReason
from supervisor.delivery.breaker import BreakerStorage
from supervisor.delivery.sweep import sweep_temp
from supervisor.pool.render_pool import RenderPool
from supervisor.queue.database import DatabaseStatus
from supervisor.queue.jobs import JobQueue
from supervisor.queue.retention import run_retention
from supervisor.settle import Settler
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

TEMP_SWEEP_INTERVAL_SECONDS = 300  # the slow tick of the temp sweep (it also runs once at start)
DATABASE_PROBE_INTERVAL_SECONDS = 5


class Upkeep:
    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        pool: RenderPool,
        settler: Settler,
        storage: BreakerStorage,
        database: DatabaseStatus,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.pool = pool
        self.settler = settler
        self.storage = storage
        self.database = database
        self.metrics = metrics

    async def tick_loop(self) -> None:
        """Reap, time out boots and top up the pool, every watchdog interval."""
        interval = self.settings.pool.watchdog_interval_ms / 1000
        while True:
            self.pool.tick()
            await asyncio.sleep(interval)

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retry.heartbeat_interval_seconds)
            await self.heartbeat_once()

    async def heartbeat_once(self) -> None:
        """Refresh every claim in flight; stop renders whose claim was lost or cancelled."""
        entries = list(self.settler.inflight.values())
        if not entries:
            return
        try:
            held = await self.queue.heartbeat([e.claim for e in entries])
            self.database.up()
        except Exception as exc:
            self.database.down(exc)
            return
        for entry in entries:
            job_id = entry.claim.job_id
            if job_id not in held:
                if entry.handle is not None and self.settler.inflight.get(job_id) is entry:
                    log.warning("claim lost (rescued or re-claimed elsewhere); stopping its render",
                                extra={"job_id": job_id})
                    self.pool.stop_job(entry.handle, job_id, KillReason.CLAIM_LOST)
            elif held[job_id]:
                self.cancel_render(job_id)

    def cancel_render(self, job_id: str) -> None:
        entry = self.settler.inflight.get(job_id)
        if entry is None or entry.cancel_requested:
            return
        entry.cancel_requested = True
        if entry.handle is not None:
            log.info("cancel requested; killing the render", extra={"job_id": job_id})
            self.pool.stop_job(entry.handle, job_id, KillReason.CANCELLED)

    async def watch_status(self, updates: asyncio.Queue[dict[str, Any]]) -> None:
        """Act on a cancel request the moment its NOTIFY arrives (not only at the next heartbeat)."""
        while True:
            message = await updates.get()
            if message.get("cancel_requested") and message.get("status") == JobStatus.PROCESSING:
                self.cancel_render(str(message.get("id")))

    async def rescue_loop(self) -> None:
        stale = self.settings.retry.stale_after_seconds
        while True:
            try:
                for job_id, status in await self.queue.rescue_stale(stale):
                    self.metrics.rescues.labels(status).inc()
                    log.warning("stale claim rescued", extra={"job_id": job_id, "status": status})
            except Exception as exc:
                self.database.down(exc)
            await asyncio.sleep(max(stale / 3, 1))

    async def retention_loop(self) -> None:
        while True:
            try:  # storage or the database away: the next round tries again
                result = await run_retention(self.queue.pool, self.storage, self.settings.retention)
                self.metrics.orphans_deleted.inc(result.orphans_deleted)
            except Exception as exc:
                log.warning("retention run failed", extra={"error": str(exc)})
            await asyncio.sleep(self.settings.retention.cleanup_interval_seconds)

    async def database_probe_loop(self) -> None:
        """The claim pool's liveness while nothing else uses it (an idle or braked worker):
        /health and export_database_up follow the database within one interval. The queue
        gauges have one writer, /metrics at scrape time (supervisor/http/app.py)."""
        while True:
            try:
                async with self.queue.pool.connection() as conn:
                    await conn.execute("SELECT 1")
                self.database.up()
            except Exception as exc:
                self.database.down(exc)
            await asyncio.sleep(DATABASE_PROBE_INTERVAL_SECONDS)

    async def sweep_loop(self) -> None:
        data_dir = Path(self.settings.data_dir).resolve()
        while True:
            await asyncio.sleep(TEMP_SWEEP_INTERVAL_SECONDS)
            self.metrics.temp_files_swept.inc(await asyncio.to_thread(sweep_temp, data_dir))
