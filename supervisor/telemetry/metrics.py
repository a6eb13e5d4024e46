"""Prometheus metrics: the seed's six under their names, plus the pool's own.

One registry per process so tests can build several supervisors without
colliding on the global default registry.

Every labelled counter and histogram has its series from the start, at zero, for
each label value known in advance (the enums of shared/vocabulary.py): ``rate()``
and ``increase()`` need a sample before the first increment, or they lose it.
No ``*_created`` series: they double the series count and no rule or panel reads them.

The histogram buckets were chosen from measured distributions (BENCHMARKS.md,
"Histogram buckets").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from itertools import product
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from shared.vocabulary import (
    ChildDeath,
    DatabaseErrorCause,
    DeliveryOutcome,
    ErrorCategory,
    ExportType,
    JobStatus,
    KillReason,
    QueueOperation,
    RecycleReason,
    StorageOperation,
    WebhookEvent,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide in prometheus_client; the worker exposes no _created series

# Claim to completion (render + upload). Measured renders sit between 1 and 5 s, so the
# steps are 0.5 s there, then coarser up to JOB_TIMEOUT_SECONDS' range.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 10, 15, 20, 30, 45, 60, 90, 120)
# Creation (or availability) to claim: milliseconds when idle, up to an hour in a backlog.
PICKUP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# Claim to the job being sent to a child: a pipe write, normally well under a millisecond.
CLAIM_TO_START_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1)

# The final statuses a job's mail is about (the outbox's ``kind``).
MAIL_KINDS = (JobStatus.COMPLETED, JobStatus.FAILED)
RESCUE_OUTCOMES = (JobStatus.PENDING, JobStatus.FAILED)


def _zero(metric: Any, *label_sets: Iterable[str]) -> None:
    """Create the series for every combination of known label values, at zero."""
    for labels in product(*label_sets):
        metric.labels(*labels)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._queue_stats_at = time.monotonic()
        for declare in (self._declare_seed, self._declare_queue, self._declare_pool, self._declare_delivery,
                        self._declare_database):
            declare(self.registry)
        _zero_known_series(self)

    def _declare_seed(self, r: CollectorRegistry) -> None:
        """The seed's metrics."""
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
        self.queue_stats_age = Gauge(
            "export_queue_stats_age_seconds",
            "Seconds since export_queue_depth and export_oldest_pending_job_age_seconds were last read from the "
            "database: while it grows they are stale (the database does not answer)",
            registry=r,
        )
        self.queue_stats_age.set_function(lambda: time.monotonic() - self._queue_stats_at)
        self.active_renders = Gauge("export_active_renders", "Renders in progress in this worker", registry=r)

    def _declare_queue(self, r: CollectorRegistry) -> None:
        """The queue."""
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
            buckets=CLAIM_TO_START_BUCKETS,
            registry=r,
        )
        self.pickup_latency = Histogram(
            "export_pickup_latency_seconds",
            "Time from job creation (or availability) to claim",
            buckets=PICKUP_BUCKETS,
            registry=r,
        )
        self.queue_errors = Counter(
            "export_queue_errors_total",
            "Claims and settles (complete, fail, defer, release) of this worker that raised; the job stays "
            "pending or processing and the stale rescue returns it",
            ["operation"],
            registry=r,
        )
        self.background_failures = Counter(
            "export_background_failures_total",
            "Background loops and tasks of the supervisor that raised (each is logged with its traceback)",
            ["task"],
            registry=r,
        )

    def _declare_pool(self, r: CollectorRegistry) -> None:
        """The pool."""
        self.child_memory = Gauge(
            "export_child_memory_bytes", "PSS of each child's whole process tree", ["child"], registry=r
        )
        self.child_kills = Counter(
            "export_child_kills_total", "Children killed by the supervisor", ["reason"], registry=r
        )
        self.child_deaths = Counter(
            "export_child_deaths_total",
            "Every render child process that ended, whatever the cause, by reason (each is logged with its "
            "exit status or signal)",
            ["reason"],
            registry=r,
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
        self.canary_ok = Gauge(
            "export_canary_healthy",
            "1 when the render pool can render (what /health's puppeteer check says): a child is ready or being "
            "replaced, and the last canary passed when ENABLE_CANARY_EXPORT is on; 0 when no child can boot",
            registry=r,
        )
        self.container_memory_ratio = Gauge(
            "export_container_memory_ratio", "Container memory in use over its limit", registry=r
        )

    def _declare_delivery(self, r: CollectorRegistry) -> None:
        """Delivery."""
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

    def _declare_database(self, r: CollectorRegistry) -> None:
        """The database (supervisor/queue/database.py's DatabaseStatus sets both)."""
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

    def task_known(self, name: str) -> None:
        """A background task (kind) exists: its failure series starts at zero."""
        self.background_failures.labels(name)

    def record_queue_stats(self, pending: int, oldest_pending_seconds: float) -> None:
        """The one writer of the queue gauges: fresh values, and their age back to zero."""
        self.queue_depth.set(pending)
        self.oldest_pending_age.set(oldest_pending_seconds)
        self._queue_stats_at = time.monotonic()

    def watch_render_pool(self, can_render: Callable[[], bool]) -> None:
        """export_canary_healthy reads `can_render` at each scrape: the same answer /health gives."""
        self.canary_ok.set_function(lambda: 1.0 if can_render() else 0.0)

    def set_jobs_created(self, totals: Mapping[str, int]) -> None:
        """Raise export_jobs_created_total to the database's counts; a counter never goes down.

        This worker's own API increments it at once; the database's count already
        includes those jobs, so catching up to it never counts one twice.
        """
        for export_type, total in totals.items():
            seen = self.registry.get_sample_value("export_jobs_created_total", {"export_type": export_type}) or 0.0
            if total > seen:
                self.jobs_created.labels(export_type).inc(total - seen)


def _zero_known_series(metrics: Metrics) -> None:
    """Every series with known label values exists from the start, at 0."""
    types, categories = list(ExportType), list(ErrorCategory)
    _zero(metrics.jobs_created, types)
    _zero(metrics.jobs_completed, types)
    _zero(metrics.jobs_failed, types, categories)
    _zero(metrics.job_duration, types)
    _zero(metrics.retries, [c for c in categories if c.retryable])
    _zero(metrics.rescues, RESCUE_OUTCOMES)
    _zero(metrics.queue_errors, QueueOperation)
    _zero(metrics.child_kills, KillReason)
    _zero(metrics.child_deaths, ChildDeath)
    _zero(metrics.child_recycles, RecycleReason)
    _zero(metrics.storage_errors, StorageOperation)
    _zero(metrics.mails_sent, MAIL_KINDS)
    _zero(metrics.mail_errors, MAIL_KINDS)
    _zero(metrics.webhook_deliveries, WebhookEvent, DeliveryOutcome)
    _zero(metrics.database_errors, DatabaseErrorCause)
