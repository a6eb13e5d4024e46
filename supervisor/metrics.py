"""Prometheus metrics: the seed's six under their names, plus the pool's own.

One registry per process so tests can build several supervisors without
colliding on the global default registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg_pool import AsyncConnectionPool

from shared.vocabulary import DatabaseErrorCause
from supervisor import sandbox
from supervisor.queries import load

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The seed's metrics.
        self.jobs_created = Counter(
            "export_jobs_created_total",
            "Jobs created by any path (SQL function or RPC, HTTP API, CLI, any worker), counted in the database "
            "and read at scrape time: every worker reports the same total, so aggregate across workers with "
            "max(), not sum()",
            ["export_type"],
            registry=r,
        )
        self.jobs_completed = Counter(
            "export_jobs_completed_total", "Jobs completed by this worker", ["export_type"], registry=r
        )
        self.jobs_failed = Counter(
            "export_jobs_failed_total",
            "Jobs failed for good by this worker",
            ["export_type", "error_category"],
            registry=r,
        )
        self.job_duration = Histogram(
            "export_job_duration_seconds",
            "Time from claim to completion of a job",
            ["export_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("export_queue_depth", "Pending jobs in the queue (all workers)", registry=r)
        self.active_renders = Gauge("export_active_renders", "Renders in progress in this worker", registry=r)
        # The queue.
        self.oldest_pending_age = Gauge(
            "export_oldest_pending_job_age_seconds", "Age of the oldest claimable pending job", registry=r
        )
        self.retries = Counter(
            "export_job_retries_total", "Attempts that went back to pending", ["error_category"], registry=r
        )
        self.rescues = Counter(
            "export_stale_jobs_rescued_total", "Stale claims returned to pending or failed", ["outcome"], registry=r
        )
        self.claim_to_start = Histogram(
            "export_claim_to_start_seconds",
            "Time from claim to the render starting in a child",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.pickup_latency = Histogram(
            "export_pickup_latency_seconds",
            "Time from job creation (or availability) to claim",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.background_failures = Counter(
            "export_background_failures_total",
            "Background loops and tasks of the supervisor that raised (each is logged with its traceback)",
            ["task"],
            registry=r,
        )
        # The pool.
        self.child_memory = Gauge(
            "export_child_memory_bytes", "PSS of each child's whole process tree", ["child"], registry=r
        )
        self.child_kills = Counter(
            "export_child_kills_total", "Children killed by the supervisor", ["reason"], registry=r
        )
        self.child_recycles = Counter(
            "export_child_recycles_total", "Children retired and replaced", ["reason"], registry=r
        )
        self.child_boot_failures = Counter(
            "export_child_boot_failures_total", "Children whose Chromium failed to start", registry=r
        )
        self.children = Gauge("export_children", "Render children by state", ["state"], registry=r)
        self.chromium_sandbox = Gauge(
            "export_chromium_sandbox",
            "1 when Chromium runs with its own sandbox (namespaces + seccomp), 0 with --no-sandbox",
            registry=r,
        )
        self.chromium_sandbox.set_function(sandbox.gauge_value)
        self.canary_ok = Gauge("export_canary_healthy", "1 when the last canary render succeeded", registry=r)
        self.container_memory_ratio = Gauge(
            "export_container_memory_ratio", "Container memory in use over its limit", registry=r
        )
        # Delivery.
        self.breaker_state = Gauge(
            "export_storage_breaker_state", "Storage circuit breaker: 0 closed, 1 half-open, 2 open", registry=r
        )
        self.storage_errors = Counter(
            "export_storage_errors_total", "Storage operations that failed", ["operation"], registry=r
        )
        self.orphans_deleted = Counter(
            "export_orphan_objects_deleted_total",
            "Stored objects of claims that lost or died, deleted by retention's sweep",
            registry=r,
        )
        self.temp_files_swept = Counter(
            "export_temp_files_swept_total",
            "Upload temp files and scratch outputs of dead workers removed by the temp sweep",
            registry=r,
        )
        self.mails_sent = Counter("export_mails_sent_total", "Mails sent from the outbox", ["kind"], registry=r)
        self.mail_errors = Counter(
            "export_mail_errors_total", "Mail sends that failed (retried later)", ["kind"], registry=r
        )
        self.webhook_deliveries = Counter(
            "export_webhook_deliveries_total",
            "Webhook delivery attempts by event and outcome: delivered (2xx), disabled (410 Gone), retry "
            "(anything else; tried again later), failed (given up)",
            ["event", "outcome"],
            registry=r,
        )

        # The database (supervisor/database.py's DatabaseStatus sets both).
        self.database_up = Gauge(
            "export_database_up",
            "1 when this worker's last database operations succeeded, 0 while the database is unreachable or failing",
            registry=r,
        )
        self.database_up.set(1)
        self.database_errors = Counter(
            "export_database_errors_total",
            "Database operations that failed, by cause: refused, authentication, pool_exhausted, protocol, "
            "timeout, other",
            ["cause"],
            registry=r,
        )
        for cause in DatabaseErrorCause:  # every series exists from the start, at 0
            self.database_errors.labels(cause.value)

    def set_jobs_created(self, totals: Mapping[str, int]) -> None:
        """Raise export_jobs_created_total to the database's counts; a counter never goes down.

        This worker's own API increments it at once; the database's count already
        includes those jobs, so catching up to it never counts one twice.
        """
        for export_type, total in totals.items():
            seen = self.registry.get_sample_value("export_jobs_created_total", {"export_type": export_type}) or 0.0
            if total > seen:
                self.jobs_created.labels(export_type).inc(total - seen)


async def read_jobs_created(pool: AsyncConnectionPool[Any]) -> dict[str, int]:
    """Every job ever created, by export type, from migration 0005's counter table."""
    async with pool.connection() as conn:
        cur = await conn.execute(load("metrics.sql")["jobs_created"])
        return {str(export_type): int(created) for export_type, created in await cur.fetchall()}
