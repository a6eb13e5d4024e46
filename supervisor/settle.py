"""Settling: every job a child takes ends in exactly one place, :meth:`Settler.settle`.

The settler owns the in-flight table (which claim is in which child). The pool
reports answers and deaths (it is the ``PoolOwner``); each becomes an outcome:

- ``Rendered``: store the file and complete the job (fenced);
- ``RenderFailed`` / ``Failed``: record the failed attempt; the database's one
  retry rule (``export_job_is_final``) decides retry or final;
- ``ChildLost``: the child was killed or died; its reason code decides.

``settle`` handles every outcome in one try/except/finally (pgqueuer's dispatch),
so the in-flight entry, the render's output file and the capacity signal are
cleaned up on one path whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.messages import NetworkPolicy, Rendered, RenderFailed, RenderJob, RenderLimits
from shared.payload import PayloadError, parse_payload
from shared.vocabulary import ErrorCategory, FailureReason, JobStatus, KillReason, QueueOperation, RenderFailure
from supervisor.delivery.breaker import CircuitBreaker
from supervisor.delivery.storage import StorageError
from supervisor.delivery.upload import Cancelled, Delivery, completion_metadata
from supervisor.pool.children import Assignment, ChildHandle, ChildLost
from supervisor.pool.render_pool import RenderPool
from supervisor.queue.jobs import Claim, ClaimLost, JobQueue, Queued
from supervisor.tasks import TaskOwner
from supervisor.telemetry import error_reporting
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

MAX_STORAGE_DEFERRALS = 100
# A render that hit its time or memory limit is a poison strike: POISON_KILL_LIMIT of
# them fail the job for good (category resource), and each sends it behind newer work.
POISON_REASONS = frozenset({FailureReason.TIMEOUT, FailureReason.MEMORY, FailureReason.CONTAINER_MEMORY})
# A render during which the child or its Chromium died is a strike as well (a document
# that crashes the browser twice is parked like a poison job), but stays transient.
STRIKE_REASONS = POISON_REASONS | {FailureReason.CHILD_CRASHED}
BLOCKED_KEPT = 50  # blocked request URLs kept on the job


@dataclass(frozen=True)
class Failed:
    """An attempt that failed before or outside a child (bad payload, storage)."""

    category: ErrorCategory
    message: str
    reason: FailureReason
    metadata: dict[str, Any] = field(default_factory=dict)


Outcome = Rendered | RenderFailed | Failed | ChildLost


class Wakes:
    """The outboxes' wake events, set after a final status wrote their rows.

    Only the outbox that got a row is woken: an idle sender's poll is a statement,
    and at hundreds of completions a second two polls per job are most of the queue
    path's database work (BENCHMARKS.md, round 2).
    """

    def __init__(self, mail: asyncio.Event, webhooks: asyncio.Event) -> None:
        self.mail = mail
        self.webhooks = webhooks

    def set(self, queued: Queued | None = None) -> None:
        """Wake what `queued` says got a row; both when it is not known."""
        if queued is None or queued.mail:
            self.mail.set()
        if queued is None or queued.webhook:
            self.webhooks.set()


@dataclass
class InFlight:
    claim: Claim
    handle: ChildHandle | None  # None once the child answered or died: the job is settling
    cancel_requested: bool = False


class Settler:
    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        queue: JobQueue,
        delivery: Delivery,
        breaker: CircuitBreaker,
        metrics: Metrics,
        tasks: TaskOwner,
        scratch: Path,
        outbox_wake: Wakes,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.queue = queue
        self.delivery = delivery
        self.breaker = breaker
        self.metrics = metrics
        self.tasks = tasks
        self.scratch = scratch
        self.inflight: dict[str, InFlight] = {}
        self.capacity = asyncio.Event()  # a child freed up, or a job settled
        self.outbox_wake = outbox_wake  # set when a mail or webhook row may have been written
        self.pool: RenderPool | None = None  # set once the pool exists (it needs us as its owner)

    # ---- starting ------------------------------------------------------------------

    def start(self, handle: ChildHandle, claim: Claim) -> None:
        """Hand a claimed job to an idle child."""
        assert self.pool is not None
        self.metrics.pickup_latency.observe(max(claim.waited_seconds, 0))
        self.inflight[claim.job_id] = InFlight(claim, handle)
        try:
            payload = parse_payload(claim.payload, claim.export_type,
                                    max_input_bytes=self.settings.render.max_input_bytes)
        except PayloadError as exc:
            failed = Failed(ErrorCategory.VALIDATION, f"invalid payload: {exc}", FailureReason.INVALID_PAYLOAD)
            self._settle_later(claim, failed)
            return
        job = render_job(claim, payload, self.settings, self.scratch)
        self.metrics.active_renders.set(self.pool.active_jobs() + 1)
        self.metrics.claim_to_start.observe(time.monotonic() - claim.claimed_at)
        self.pool.dispatch(handle, job, claim)

    def hand_back(self, claim: Claim) -> None:
        """A claim no child can take now (one retired meanwhile): back to pending, attempt unspent."""
        self.inflight[claim.job_id] = InFlight(claim, None)
        self._settle_later(claim, ChildLost(KillReason.SHUTDOWN, "no free slot after the claim"))

    # ---- the pool's reports (PoolOwner) -----------------------------------------------

    def on_rendered(self, handle: ChildHandle, assignment: Assignment, result: Rendered) -> None:
        self._settle_later(assignment.context, result)

    def on_render_failed(self, handle: ChildHandle, assignment: Assignment, result: RenderFailed) -> None:
        self._settle_later(assignment.context, result)

    def on_child_lost(self, handle: ChildHandle, assignment: Assignment, lost: ChildLost) -> None:
        self._settle_later(assignment.context, lost)

    def on_capacity(self) -> None:
        if self.pool is not None:
            self.metrics.active_renders.set(self.pool.active_jobs())
        self.capacity.set()

    def _settle_later(self, claim: Claim, outcome: Outcome) -> None:
        entry = self.inflight.get(claim.job_id)
        if entry is not None:
            entry.handle = None
        self.tasks.spawn(self.settle(claim, outcome), name=f"settle-{claim.job_id}", kind="settle")

    # ---- the one settle function ------------------------------------------------------

    async def settle(self, claim: Claim, outcome: Outcome) -> None:
        report_if_not_the_documents(claim, outcome)
        try:
            match outcome:
                case Rendered():
                    await self._deliver(claim, outcome)
                case RenderFailed():
                    await self._record_failure(claim, self._failure_of_render(claim, outcome))
                case Failed():
                    await self._record_failure(claim, outcome)
                case ChildLost(spared=True) | ChildLost(reason=KillReason.SHUTDOWN):  # no attempt spent
                    await self.queue.release(claim)
                    # The shutdown message is matched by scripts (scripts/image-check.sh): keep its words.
                    message = f"job handed back to pending: {outcome.detail}" if outcome.detail else \
                        "job released to pending at shutdown"
                    log.info(message, extra={"job_id": claim.job_id})
                case ChildLost(reason=KillReason.CLAIM_LOST):
                    pass  # another worker holds the job; nothing of ours to write
                case ChildLost(reason=KillReason.CANCELLED):
                    await self.queue.settle_cancelled(claim)
                    log.info("job cancelled during render", extra={"job_id": claim.job_id})
                case ChildLost():
                    await self._record_failure(claim, self._failure_of_kill(outcome))
        except ClaimLost as exc:
            log.warning("claim lost; result discarded", extra={"job_id": claim.job_id, "error": str(exc)})
        except Exception as exc:
            # The database is away: the claim stays processing and the stale rescue returns it.
            self.metrics.queue_errors.labels(QueueOperation.SETTLE).inc()
            log.error("could not settle job", extra={"job_id": claim.job_id, "error": str(exc)})
        finally:
            self.inflight.pop(claim.job_id, None)
            if isinstance(outcome, Rendered):
                with contextlib.suppress(OSError):
                    Path(outcome.output_path).unlink()
            self.capacity.set()

    async def _deliver(self, claim: Claim, result: Rendered) -> None:
        try:
            stored = await self.delivery.store(claim, result)
        except Cancelled:
            await self.queue.settle_cancelled(claim)
            return
        except StorageError as exc:
            await self._storage_failed(claim, exc)
            return
        try:
            queued = await self.queue.complete(
                claim,
                storage_path=stored.key,
                file_url=stored.url,
                file_size_bytes=result.size_bytes,
                content_type=result.content_type,
                metadata=completion_metadata(result, stored, self.worker_id, claim.payload),
            )
        except ClaimLost:
            await self.delivery.discard(claim, stored.key)
            raise
        duration = time.monotonic() - claim.claimed_at
        self.metrics.jobs_completed.labels(claim.export_type).inc()
        self.metrics.job_duration.labels(claim.export_type).observe(duration)
        self.outbox_wake.set(queued)
        log.info("job completed", extra={"job_id": claim.job_id, "duration_ms": round(duration * 1000, 1),
                                         "size_bytes": result.size_bytes, "attempt": claim.attempt})

    async def _storage_failed(self, claim: Claim, exc: StorageError) -> None:
        message = f"Storage upload failed: {exc}"
        if exc.category is not ErrorCategory.TRANSIENT:
            await self._record_failure(claim, Failed(ErrorCategory.PERMANENT, message, FailureReason.STORAGE))
            return
        # After MAX_STORAGE_DEFERRALS free waits the outage spends attempts like any
        # transient error, so an endless outage still ends in failure (and its one mail).
        job = await self.queue.get_job(claim.job_id)
        if int(((job or {}).get("metadata") or {}).get("storage_deferrals") or 0) >= MAX_STORAGE_DEFERRALS:
            await self._record_failure(claim, Failed(ErrorCategory.TRANSIENT, message, FailureReason.STORAGE))
            return
        delay_ms = int(max(self.breaker.seconds_until_retry(), 1.0) * 1000)
        deferrals = await self.queue.defer(claim, delay_ms, message)
        log.warning("storage unavailable; job deferred without spending an attempt",
                    extra={"job_id": claim.job_id, "retry_in_ms": delay_ms, "deferrals": deferrals,
                           "error_category": ErrorCategory.TRANSIENT})

    async def _record_failure(self, claim: Claim, failed: Failed) -> None:
        metadata = failed.metadata | {"failure_reason": failed.reason}
        poison = failed.reason in POISON_REASONS
        category = ErrorCategory.RESOURCE if poison else failed.category
        strike = failed.reason in STRIKE_REASONS
        outcome = await self.queue.fail(claim, category, failed.message, metadata, child_killed=strike)
        extra = {"job_id": claim.job_id, "error_category": category, "attempt": claim.attempt,
                 "failure_reason": failed.reason, "error": failed.message,
                 "duration_ms": round((time.monotonic() - claim.claimed_at) * 1000, 1)}
        if outcome.status is JobStatus.PENDING:
            self.metrics.retries.labels(category).inc()
            log.warning("job attempt failed; retrying", extra=extra | {"retry_in_ms": outcome.retry_in_ms})
        else:
            self.metrics.jobs_failed.labels(claim.export_type, category).inc()
            self.outbox_wake.set()
            log.error("job failed", extra=extra | {"child_kills": outcome.child_kills})

    def _failure_of_render(self, claim: Claim, result: RenderFailed) -> Failed:
        metadata = {"blocked_requests": [b.url for b in result.blocked][:BLOCKED_KEPT],
                    "render_ms": round(result.render_ms, 1), "render_failure": result.code}
        if result.code is RenderFailure.TIMEOUT:
            # The child's own navigation timeout can be the job deadline itself: the same limit either way.
            return Failed(result.category, f"{self._timeout_message()} ({result.message})",
                          FailureReason.TIMEOUT, metadata)
        return Failed(result.category, result.message, FailureReason.RENDER, metadata)

    def _failure_of_kill(self, lost: ChildLost) -> Failed:
        limit_mb = self.settings.pool.child_memory_limit_mb
        meta = {"child_kill_reason": lost.reason}
        match lost.reason:
            case KillReason.MEMORY:
                message = (f"render used more memory than the limit of {limit_mb} MiB (CHILD_MEMORY_LIMIT_MB); "
                           f"{lost.detail}")
                return Failed(ErrorCategory.RESOURCE, message, FailureReason.MEMORY, meta)
            case KillReason.CONTAINER_MEMORY:
                message = f"render killed because the container ran out of memory ({lost.detail})"
                return Failed(ErrorCategory.RESOURCE, message, FailureReason.CONTAINER_MEMORY, meta)
            case KillReason.TIMEOUT:
                return Failed(ErrorCategory.RESOURCE, self._timeout_message(), FailureReason.TIMEOUT, meta)
            case _:
                message = f"render child died ({lost.reason}, exit code {lost.exitcode}) during the render"
                return Failed(ErrorCategory.TRANSIENT, message, FailureReason.CHILD_CRASHED, meta)

    def _timeout_message(self) -> str:
        return f"TimeoutError: render took longer than JOB_TIMEOUT_SECONDS={self.settings.worker.job_timeout_seconds}"


# Deaths that say something about the worker, not about the document it rendered.
_INTERNAL_DEATHS = frozenset({KillReason.CRASHED, KillReason.UNRESPONSIVE})


def report_if_not_the_documents(claim: Claim, outcome: Outcome) -> None:
    """Send a render failure to Sentry (when on) unless the document caused it: only reason codes, no content."""
    match outcome:
        case RenderFailed(category=ErrorCategory.TRANSIENT, code=code) if code is not RenderFailure.TIMEOUT:
            reason, detail = FailureReason.RENDER, str(code)
        case ChildLost(reason=kill) if kill in _INTERNAL_DEATHS:
            reason, detail = FailureReason.CHILD_CRASHED, str(kill)
        case _:
            return
    error_reporting.report_render_failure(reason, job_id=claim.job_id, export_type=claim.export_type,
                                          attempt=claim.attempt, detail=detail)


def render_job(claim: Claim, payload: Any, settings: Settings, scratch: Path) -> RenderJob:
    """What a child needs for one job: the payload, limits and policy; no secrets."""
    render = settings.render
    return RenderJob(
        job_id=claim.job_id,
        attempt=claim.attempt,
        export_type=claim.export_type,
        payload=payload,
        output_path=str(scratch / f"{claim.job_id}-{claim.attempt}.out"),
        limits=RenderLimits(
            max_pages=render.max_pages,
            max_image_pixels=render.max_image_pixels,
            max_output_bytes=render.max_output_bytes,
            max_fetch_bytes=render.max_fetch_bytes,
            navigation_timeout_ms=min(30_000, settings.worker.job_timeout_seconds * 1000),
        ),
        policy=NetworkPolicy(
            allowed_hosts=list(render.allowed_hosts),
            allowed_url_hosts=list(render.allowed_url_hosts),
            trusted_private_hosts=list(render.trusted_private_hosts),
        ),
        allow_test_templates=render.allow_test_templates,
    )


SETTLE_GRACE_SECONDS = 10  # after the render grace, the most time handing jobs back may take


async def drain(settler: Settler, pool: RenderPool, deadline: float, wake: asyncio.Event,
              fast_stop: Callable[[], bool]) -> None:
    """At shutdown: let in-flight renders finish until `deadline` (or a fast stop), then
    kill what still renders (it goes back to pending without spending its attempt) and
    wait up to SETTLE_GRACE_SECONDS for those jobs to be settled."""
    await _until_settled(settler, deadline, wake, fast_stop)
    for entry in list(settler.inflight.values()):
        if entry.handle is not None:
            pool.kill(entry.handle, KillReason.SHUTDOWN)
    await _until_settled(settler, time.monotonic() + SETTLE_GRACE_SECONDS, wake, lambda: False)


async def _until_settled(settler: Settler, deadline: float, wake: asyncio.Event, fast_stop: Callable[[], bool]) -> None:
    """Until nothing is in flight, `deadline` passes or `fast_stop()`; a settled job or `wake` (a signal) wakes it."""
    while settler.inflight and (remaining := deadline - time.monotonic()) > 0 and not fast_stop():
        settler.capacity.clear()
        wake.clear()
        waiters = [asyncio.ensure_future(settler.capacity.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
