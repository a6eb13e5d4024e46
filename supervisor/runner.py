"""The supervisor: claims jobs, hands them to render children, delivers results.

Shaped like gunicorn's arbiter: the signal handler only records the signal and
wakes the loop; one loop claims, and periodic tasks heartbeat, rescue, clean up
and send mail. Memory and deadlines are the watchdog thread's (supervisor/watchdog.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from shared.errors import ErrorCategory
from shared.messages import CHROMIUM_ARGS, ChildOptions, NetworkPolicy, Rendered, RenderFailed, RenderJob, RenderLimits
from shared.payload import PayloadError, parse_payload
from supervisor.breaker import STATE_VALUES
from supervisor.db import open_pool
from supervisor.health import HealthCheck, breaker_check, database_check, memory_check
from supervisor.listener import Listener
from supervisor.metrics import Metrics
from supervisor.migrate import migrate, sync_queue_settings
from supervisor.outbox import OutboxSender
from supervisor.pool import Assignment, ChildHandle, ChildTarget, PoolConfig, RenderPool
from supervisor.queue import Claim, ClaimLost, FenceCheck, JobQueue
from supervisor.retention import run_retention
from supervisor.watchdog import Watchdog
from supervisor.workers import WorkerRegistry

log = logging.getLogger(__name__)

MAX_STORAGE_DEFERRALS = 100
EXTENSIONS = {"application/pdf": "pdf", "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class InFlight:
    claim: Claim
    handle: ChildHandle | None
    phase: str = "rendering"  # rendering | delivering
    cancel_requested: bool = False
    dispatched_at: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        *,
        child_target: ChildTarget | None = None,
        storage: Any = None,
        mail: Any = None,
        metrics: Metrics | None = None,
        serve_http: bool = True,
        run_migrations: bool = True,
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.worker_id = settings.worker.worker_id or default_worker_id()
        self.data_dir = Path(settings.data_dir).resolve()
        self.metrics = metrics or Metrics()
        self.serve_http = serve_http
        self.run_migrations = run_migrations
        if child_target is None:
            from render_child.main import child_entry

            child_target = child_entry
        self.child_target = child_target
        self._storage = storage
        self._mail = mail
        self.inflight: dict[str, InFlight] = {}
        self._signals: deque[int] = deque()
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self.stopping = False
        self.fast_stop = False
        self.db_ok = True
        self.db_error = ""
        self._reviving = False
        self.started = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.http_server: Any = None
        self.http_port: int | None = None

    # ---- setup -----------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._queue_signal, sig)
        try:
            await self._setup()
            self.started.set()
            log.info("worker started", extra={"children": self.settings.worker.max_concurrent_renders,
                                              "port": self.http_port, "storage": self.storage.name})
            await self._claim_loop()
            await self._shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        log.info("worker stopped")
        return 0

    def _queue_signal(self, sig: int) -> None:
        # Only record and wake: the loop does the work (gunicorn's arbiter).
        self._signals.append(sig)
        self._wake.set()
        self._capacity.set()

    def request_stop(self, fast: bool = False) -> None:
        self._queue_signal(signal.SIGINT if fast else signal.SIGTERM)
        if fast:
            self._signals.append(signal.SIGTERM)

    async def _setup(self) -> None:
        from supervisor.breaker import BreakerStorage, CircuitBreaker
        from supervisor.links import LinkSigner, load_or_create_secret
        from supervisor.mail import build_mail_backend
        from supervisor.storage import build_storage

        if self.run_migrations:
            applied = await asyncio.to_thread(migrate, self.conninfo)
            if applied:
                log.info("migrations applied", extra={"migrations": applied})
        await asyncio.to_thread(sync_queue_settings, self.conninfo, self.settings)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.link_signer = LinkSigner(load_or_create_secret(self.settings.storage.link_secret, self.data_dir))
        inner = self._storage or build_storage(self.settings, self.data_dir)
        storage_settings = self.settings.storage
        self.breaker = CircuitBreaker(
            storage_settings.breaker_failure_threshold,
            storage_settings.breaker_cooldown_seconds,
            enabled=storage_settings.enable_circuit_breaker,
        )
        self.storage = BreakerStorage(inner, self.breaker)
        self.mail = self._mail or build_mail_backend(self.settings, self.data_dir)
        self.db = await open_pool(self.conninfo, self.settings, max_size=6, name=f"export-worker {self.worker_id}")
        self.queue = JobQueue(self.db, self.worker_id, self.settings.retry)
        self.workers = WorkerRegistry(self.db, self.worker_id,
                                      forget_hours=self.settings.console.console_worker_forget_hours)
        self.fence = FenceCheck(self.queue)
        self.listener: Listener | None = None
        if self.settings.database.listen_notify:
            self.listener = Listener(self.conninfo, connect_timeout=self.settings.database.connect_timeout_seconds)
            self._spawn_task(self.listener.run(), "listener")
            self._spawn_task(self._watch_status(self.listener.subscribe()), "cancel-watch")
        self.outbox = OutboxSender(self.db, self.worker_id, self.settings, self.mail, self.storage, self.metrics)
        self._spawn_task(self.outbox.run(), "outbox")
        if self.serve_http:
            # Bind the port before any child starts: a taken port fails fast and leaves nothing behind.
            await self._start_http()
        pool_settings = self.settings.pool
        self.scratch = self.data_dir / "scratch"
        options = ChildOptions(
            child_index=0,
            worker_id=self.worker_id,
            executable_path=self.settings.render.puppeteer_executable_path,
            chromium_args=list(CHROMIUM_ARGS),
            log_level=self.settings.worker.log_level,
            scratch_dir=str(self.scratch),
        )
        self.pool = RenderPool(
            PoolConfig(
                size=self.settings.worker.max_concurrent_renders,
                options=options,
                target=self.child_target,
                job_timeout_seconds=self.settings.worker.job_timeout_seconds,
                renders_per_child=pool_settings.renders_per_child,
                child_max_age_seconds=pool_settings.child_max_age_seconds,
                boot_timeout_seconds=pool_settings.child_boot_timeout_seconds,
                canary=self.settings.worker.enable_canary_export,
                storm_limit=pool_settings.restart_storm_limit,
                storm_window_seconds=pool_settings.restart_storm_window_seconds,
            ),
            owner=self,
            metrics=self.metrics,
        )
        self.pool.start()
        loop = asyncio.get_running_loop()
        self.watchdog = Watchdog(
            self.pool,
            loop,
            interval_seconds=pool_settings.watchdog_interval_ms / 1000,
            child_limit_bytes=pool_settings.child_memory_limit_mb * 2**20,
            high_water_ratio=pool_settings.container_high_water_percent / 100,
            critical_ratio=pool_settings.container_critical_percent / 100,
            metrics=self.metrics,
        )
        self.watchdog.start()
        self._spawn_task(self._tick_loop(), "tick")
        self._spawn_task(self._heartbeat_loop(), "heartbeat")
        self._spawn_task(self._rescue_loop(), "rescue")
        self._spawn_task(self._retention_loop(), "retention")
        self._spawn_task(self._stats_loop(), "stats")

    async def _start_http(self) -> None:
        from supervisor.http_app import AppState, build_app, make_server

        state = AppState(
            settings=self.settings,
            queue=self.queue,
            metrics=self.metrics,
            listener=self.listener,
            storage=self.storage,
            link_signer=self.link_signer,
            files_root=self.data_dir / "files",
            health=self,
        )
        self.http_server = make_server(build_app(state), self.settings.worker.port)
        self._spawn_task(self.http_server.serve(), "http")
        for _ in range(200):
            if self.http_server.started:
                break
            await asyncio.sleep(0.01)
        self.http_port = self.http_server.port

    def _spawn_task(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _background_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- the claim loop --------------------------------------------------------

    def _may_claim(self) -> bool:
        if self.stopping or self.pool.braked or self.watchdog.over_high_water:
            return False
        return not (self.settings.worker.enable_canary_export and self.pool.last_canary_ok is False)

    async def _claim_loop(self) -> None:
        busy_poll = self.settings.worker.polling_interval_busy_ms / 1000
        idle_poll = self.settings.worker.polling_interval_idle_ms / 1000
        poll = idle_poll
        while True:
            self._handle_signals()
            if self.stopping:
                return
            # Clear the wake-ups before looking: a child freed or a NOTIFY arriving
            # from here on wakes the wait below instead of being lost.
            self._capacity.clear()
            if self.listener is not None:
                self.listener.job_available.clear()
            idle = self.pool.idle_children() if self._may_claim() else []
            claims: list[Claim] = []
            if idle:
                try:
                    claims = await self.queue.claim(len(idle))
                    if not self.db_ok:
                        log.info("database available again; claiming")
                    self.db_ok = True
                except Exception as exc:
                    self._database_down(exc)
                    await self._sleep_or_signal(busy_poll)
                    continue
                # Children may have changed while we awaited the claim (a recycle
                # retired one): hand out only to children that are idle now.
                available = self.pool.idle_children()
                for claim in claims:
                    if available:
                        self._start_job(available.pop(0), claim)
                    else:
                        self.inflight[claim.job_id] = InFlight(claim, None, phase="delivering")
                        self._background_task(self._release(claim))
                poll = busy_poll if claims else idle_poll
                if claims and len(claims) == len(idle):
                    continue  # there may be more; claim again as children free up
            await self._wait_for_work(poll, bool(idle) and not claims)

    async def _wait_for_work(self, poll: float, queue_was_empty: bool) -> None:
        """Sleep until a NOTIFY, a freed child, a signal, or the poll interval."""
        timeout = poll
        if queue_was_empty:
            with contextlib.suppress(Exception):
                soonest = await self.queue.next_available_in()
                if soonest is not None:
                    timeout = min(timeout, max(soonest, 0.01))
        waiters = [asyncio.ensure_future(self._capacity.wait())]
        if self.listener is not None and queue_was_empty:
            waiters.append(asyncio.ensure_future(self.listener.job_available.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _sleep_or_signal(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if self.stopping:
                self.fast_stop = True
                log.warning("second signal: stopping fast", extra={"signal": signal.Signals(sig).name})
            else:
                self.stopping = True
                log.info("signal received: no more claims, finishing in-flight jobs",
                         extra={"signal": signal.Signals(sig).name, "in_flight": len(self.inflight)})

    def _database_down(self, exc: Exception) -> None:
        if self.db_ok:
            log.error("database unavailable; not claiming", extra={"error": str(exc)})
        self.db_ok = False
        self.db_error = str(exc)
        if not self._reviving and not self.stopping:
            self._reviving = True
            self._background_task(self._revive_pool())

    async def _revive_pool(self) -> None:
        """Reconnect the pool as soon as the database answers again.

        psycopg_pool retries each lost connection with exponential backoff (1, 2, 4 ... s,
        for up to its reconnect_timeout of 5 minutes): after an outage of a minute the pool
        could stay empty for another half minute or more once the database is back (no
        claims, /health 503). Once a second, try one connection of our own; when it works
        and the pool still has none to give, add a connection attempt now (a resize by one
        and back: the pool may hold one connection over its size until it shrinks).
        """
        import psycopg

        timeout = self.settings.database.connect_timeout_seconds
        try:
            while not self.stopping:
                await asyncio.sleep(1.0)
                try:
                    probe = await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=timeout)
                except Exception as exc:
                    log.debug("database still unreachable", extra={"error": str(exc)})
                    continue
                await probe.close()
                with contextlib.suppress(Exception):
                    async with self.db.connection(timeout=0.5) as conn:
                        await conn.execute("SELECT 1")
                    return  # the pool has recovered on its own
                min_size, max_size = self.db.min_size, self.db.max_size
                await self.db.resize(min_size + 1, max_size + 1)
                await self.db.resize(min_size, max_size)
                log.info("database reachable again; pool reconnecting now")
                return
        finally:
            self._reviving = False

    # ---- starting a job ----------------------------------------------------------

    def _start_job(self, handle: ChildHandle, claim: Claim) -> None:
        self.metrics.pickup_latency.observe(max(claim.waited_seconds, 0))
        try:
            payload = parse_payload(claim.payload, claim.export_type,
                                    max_input_bytes=self.settings.render.max_input_bytes)
        except PayloadError as exc:
            self.inflight[claim.job_id] = InFlight(claim, None, phase="delivering")
            self._background_task(self._fail(claim, "validation", f"invalid payload: {exc}", {}))
            self._capacity.set()
            return
        render = self.settings.render
        job = RenderJob(
            job_id=claim.job_id,
            attempt=claim.attempt,
            export_type=claim.export_type,
            payload=payload,
            output_path=str(self.scratch / f"{claim.job_id}-{claim.attempt}.out"),
            limits=RenderLimits(
                max_pages=render.max_pages,
                max_image_pixels=render.max_image_pixels,
                max_output_bytes=render.max_output_bytes,
                max_fetch_bytes=render.max_fetch_bytes,
                navigation_timeout_ms=min(30_000, self.settings.worker.job_timeout_seconds * 1000),
            ),
            policy=NetworkPolicy(
                allowed_hosts=list(render.allowed_hosts),
                allowed_url_hosts=list(render.allowed_url_hosts),
                trusted_private_hosts=list(render.trusted_private_hosts),
            ),
            allow_test_templates=render.allow_test_templates,
        )
        self.inflight[claim.job_id] = InFlight(claim, handle)
        self.metrics.active_renders.set(len(self.pool.busy_children()) + 1)
        self.metrics.claim_to_start.observe(time.monotonic() - claim.claimed_at)
        self.pool.dispatch(handle, job, claim)

    # ---- PoolOwner: answers and deaths ---------------------------------------------

    def on_capacity(self) -> None:
        self.metrics.active_renders.set(len(self.pool.busy_children()))
        self._capacity.set()

    def on_rendered(self, handle: ChildHandle, assignment: Assignment, result: Rendered) -> None:
        claim: Claim = assignment.context
        entry = self.inflight.get(claim.job_id)
        if entry is not None:
            entry.phase, entry.handle = "delivering", None
        self._background_task(self._deliver(claim, result))

    def on_render_failed(self, handle: ChildHandle, assignment: Assignment, result: RenderFailed) -> None:
        claim: Claim = assignment.context
        entry = self.inflight.get(claim.job_id)
        if entry is not None:
            entry.phase, entry.handle = "delivering", None
        metadata = {"blocked_requests": [b.url for b in result.blocked][:50], "render_ms": round(result.render_ms, 1)}
        message = result.message
        if message.startswith("render timed out") and time.monotonic() >= assignment.deadline:
            # The child's navigation timeout is the job deadline itself (when JOB_TIMEOUT_SECONDS <= 30),
            # so the child and the watchdog race for it: report the same limit whichever wins.
            message = f"{self._job_timeout_message()} ({message})"
        self._background_task(self._fail(claim, result.category, message, metadata))

    def _job_timeout_message(self) -> str:
        return f"TimeoutError: render took longer than JOB_TIMEOUT_SECONDS={self.settings.worker.job_timeout_seconds}"

    def on_child_lost(self, handle: ChildHandle, assignment: Assignment, reason: str, exitcode: int | None) -> None:
        claim: Claim = assignment.context
        entry = self.inflight.get(claim.job_id)
        if entry is not None:
            entry.phase, entry.handle = "delivering", None
        limit_mb = self.settings.pool.child_memory_limit_mb
        if reason == "claim_lost":
            self.inflight.pop(claim.job_id, None)
            return
        if reason == "cancelled":
            self._background_task(self._settle_cancelled(claim))
            return
        if reason == "shutdown":
            self._background_task(self._release(claim))
            return
        category: ErrorCategory
        if reason == "memory":
            category, message = "resource", (
                f"render used more memory than the limit of {limit_mb} MiB (CHILD_MEMORY_LIMIT_MB); "
                f"{handle.kill_detail}"
            )
        elif reason == "container_memory":
            category = "resource"
            message = f"render killed because the container ran out of memory ({handle.kill_detail})"
        elif reason == "timeout":
            category, message = "transient", self._job_timeout_message()
        else:
            category, message = "transient", f"render child died ({reason}, exit code {exitcode}) during the render"
        self._background_task(self._fail(claim, category, message, {"child_kill_reason": reason}))

    # ---- settling --------------------------------------------------------------------

    async def _deliver(self, claim: Claim, result: Rendered) -> None:
        from supervisor.storage import StorageError, object_path

        output = Path(result.output_path)
        try:
            # Fencing: no upload unless a heartbeat sent after the render ended still holds the claim.
            if await self.fence.check(claim):
                await self.queue.settle_cancelled(claim)
                return
            path = object_path(claim.user_id, claim.job_id, claim.export_type, result.content_type)
            ttl = self.settings.storage.signed_url_ttl_seconds

            def upload() -> str:  # one thread hop for both calls
                self.storage.put(path, output, result.content_type)
                return str(self.storage.signed_url(path, ttl))

            try:
                url = await asyncio.to_thread(upload)
            except StorageError as exc:
                self.metrics.storage_errors.labels("upload").inc()
                await self._storage_failed(claim, exc)
                return
            finally:
                self.metrics.breaker_state.set(STATE_VALUES[self.breaker.state])
            metadata = {
                "pages": result.pages,
                "width": result.width,
                "height": result.height,
                "render_ms": round(result.render_ms, 1),
                "blocked_requests": [b.url for b in result.blocked][:50],
                "blocked_count": len(result.blocked),
                "subresources_fetched": result.fetched,
                "worker_id": self.worker_id,
            }
            await self.queue.complete(
                claim,
                storage_path=path,
                file_url=url,
                file_size_bytes=result.size_bytes,
                content_type=result.content_type,
                metadata={k: v for k, v in metadata.items() if v is not None},
            )
            duration = time.monotonic() - claim.claimed_at
            self.metrics.jobs_completed.labels(claim.export_type).inc()
            self.metrics.job_duration.labels(claim.export_type).observe(duration)
            self.outbox.wake.set()
            log.info("job completed", extra={"job_id": claim.job_id, "duration_ms": round(duration * 1000, 1),
                                             "size_bytes": result.size_bytes, "attempt": claim.attempt})
        except ClaimLost as exc:
            log.warning("claim lost; result discarded", extra={"job_id": claim.job_id, "error": str(exc)})
        except Exception as exc:
            # The database is away: the claim stays processing and the rescue returns it.
            log.error("could not settle job", extra={"job_id": claim.job_id, "error": str(exc)})
        finally:
            self.inflight.pop(claim.job_id, None)
            with contextlib.suppress(OSError):
                output.unlink()
            self._capacity.set()

    async def _storage_failed(self, claim: Claim, exc: Any) -> None:
        if exc.category == "transient":
            # After MAX_STORAGE_DEFERRALS free waits, the outage spends attempts like any
            # transient error, so an endless outage ends in failure (and its one mail).
            job = await self.queue.get_job(claim.job_id)
            if int(((job or {}).get("metadata") or {}).get("storage_deferrals") or 0) >= MAX_STORAGE_DEFERRALS:
                await self._fail_now(claim, "transient", f"Storage upload failed: {exc}", {})
                return
            delay_ms = int(max(self.breaker.seconds_until_retry(), 1.0) * 1000)
            deferrals = await self.queue.defer(claim, delay_ms, f"Storage upload failed: {exc}")
            log.warning("storage unavailable; job deferred without spending an attempt",
                        extra={"job_id": claim.job_id, "retry_in_ms": delay_ms, "deferrals": deferrals,
                               "error_category": "transient"})
            if deferrals >= MAX_STORAGE_DEFERRALS:
                log.error("storage deferrals exhausted; further failures spend attempts",
                          extra={"job_id": claim.job_id})
            return
        await self._fail_now(claim, "permanent", f"Storage upload failed: {exc}", {})

    async def _fail(self, claim: Claim, category: ErrorCategory, message: str, metadata: dict[str, Any]) -> None:
        try:
            await self._fail_now(claim, category, message, metadata)
        finally:
            self.inflight.pop(claim.job_id, None)
            self._capacity.set()

    async def _fail_now(self, claim: Claim, category: ErrorCategory, message: str, metadata: dict[str, Any]) -> None:
        try:
            outcome = await self.queue.fail(claim, category, message, metadata)
        except ClaimLost:
            log.warning("claim lost before the failure was recorded", extra={"job_id": claim.job_id})
            return
        except Exception as exc:
            log.error("could not record failure", extra={"job_id": claim.job_id, "error": str(exc)})
            return
        extra = {"job_id": claim.job_id, "error_category": category, "attempt": claim.attempt,
                 "duration_ms": round((time.monotonic() - claim.claimed_at) * 1000, 1), "error": message}
        if outcome.status == "pending":
            self.metrics.retries.labels(category).inc()
            log.warning("job attempt failed; retrying", extra=extra | {"retry_in_ms": outcome.retry_in_ms})
        else:
            self.metrics.jobs_failed.labels(claim.export_type, category).inc()
            self.outbox.wake.set()
            log.error("job failed", extra=extra)

    async def _settle_cancelled(self, claim: Claim) -> None:
        try:
            await self.queue.settle_cancelled(claim)
            log.info("job cancelled during render", extra={"job_id": claim.job_id})
        except Exception as exc:
            log.warning("could not settle cancelled job", extra={"job_id": claim.job_id, "error": str(exc)})
        finally:
            self.inflight.pop(claim.job_id, None)
            self._capacity.set()

    async def _release(self, claim: Claim) -> None:
        try:
            await self.queue.release(claim)
            log.info("job released to pending at shutdown", extra={"job_id": claim.job_id})
        except Exception as exc:
            log.warning("could not release job", extra={"job_id": claim.job_id, "error": str(exc)})
        finally:
            self.inflight.pop(claim.job_id, None)
            self._capacity.set()

    # ---- periodic work ---------------------------------------------------------------

    async def _tick_loop(self) -> None:
        interval = self.settings.pool.watchdog_interval_ms / 1000
        while True:
            self.pool.tick()
            self.metrics.canary_ok.set(1 if self.pool.last_canary_ok else 0)
            await asyncio.sleep(interval)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.workers.beat_for(self)  # this worker's row in export_workers
            await asyncio.sleep(self.settings.retry.heartbeat_interval_seconds)
            await self.heartbeat_once()

    async def heartbeat_once(self) -> None:
        entries = list(self.inflight.values())
        if not entries:
            return
        try:
            held = await self.queue.heartbeat([e.claim for e in entries])
            self.db_ok = True
        except Exception as exc:
            self._database_down(exc)
            return
        for entry in entries:
            job_id = entry.claim.job_id
            if job_id not in held:
                if entry.handle is not None and self.inflight.get(job_id) is entry:
                    log.warning("claim lost (rescued or re-claimed elsewhere); stopping its render",
                                extra={"job_id": job_id})
                    self.pool.kill(entry.handle, "claim_lost")
            elif held[job_id]:
                self._cancel_render(job_id)

    def _cancel_render(self, job_id: str) -> None:
        entry = self.inflight.get(job_id)
        if entry is None or entry.cancel_requested:
            return
        entry.cancel_requested = True
        if entry.handle is not None:
            log.info("cancel requested; killing the render", extra={"job_id": job_id})
            self.pool.kill(entry.handle, "cancelled")

    async def _watch_status(self, updates: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            message = await updates.get()
            if message.get("cancel_requested") and message.get("status") == "processing":
                self._cancel_render(str(message.get("id")))

    async def _rescue_loop(self) -> None:
        stale = self.settings.retry.stale_after_seconds
        while True:
            try:
                for job_id, status in await self.queue.rescue_stale(stale):
                    self.metrics.rescues.labels(status).inc()
                    log.warning("stale claim rescued", extra={"job_id": job_id, "status": status})
            except Exception as exc:
                self._database_down(exc)
            await asyncio.sleep(max(stale / 3, 1))

    async def _retention_loop(self) -> None:
        while True:
            try:
                await run_retention(self.db, self.storage, self.settings.retention)
            except Exception as exc:
                log.warning("retention run failed", extra={"error": str(exc)})
            await asyncio.sleep(self.settings.retention.cleanup_interval_seconds)

    async def _stats_loop(self) -> None:
        while True:
            try:
                stats = await self.queue.stats()
                self.metrics.queue_depth.set(stats["pending"])
                self.metrics.oldest_pending_age.set(stats["oldest_pending_seconds"])
                self.db_ok = True
            except Exception as exc:
                self._database_down(exc)
            await asyncio.sleep(5)

    # ---- shutdown -----------------------------------------------------------------------

    async def _shutdown(self) -> None:
        grace = self.settings.worker.graceful_shutdown_timeout_ms / 1000
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline and not self.fast_stop:
            self._capacity.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._capacity.wait(), min(0.25, max(deadline - time.monotonic(), 0.01)))
            self._handle_signals()
        # Whatever still renders goes back to pending without spending its attempt.
        for entry in list(self.inflight.values()):
            if entry.handle is not None:
                self.pool.kill(entry.handle, "shutdown")
        self.pool.tick()
        settle_deadline = time.monotonic() + 10
        while (self.inflight or self._background) and time.monotonic() < settle_deadline:
            await asyncio.sleep(0.02)
        self.watchdog.stop()
        await self.pool.stop(grace_seconds=5)
        if self.http_server is not None:
            self.http_server.should_exit = True
        for task in self._tasks:
            if task.get_name() != "http":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.db.close()

    # ---- HealthSources ------------------------------------------------------------------

    async def database(self) -> HealthCheck:
        return await database_check(self.db)

    def storage_health(self) -> HealthCheck:
        return breaker_check(
            self.breaker.state if self.breaker.enabled else None,
            backend=self.storage.name,
            retry_in=self.breaker.seconds_until_retry(),
        )

    def render_pool(self) -> HealthCheck:
        if getattr(self, "pool", None) is None:
            return HealthCheck(False, "render pool starting")
        ok, message = self.pool.describe()
        if self.settings.worker.enable_canary_export and self.pool.last_canary_ok is False:
            return HealthCheck(False, "canary render failed: Chromium cannot render")
        return HealthCheck(ok, message.replace("Render pool OK", "Puppeteer OK") if ok else message)

    def memory(self) -> HealthCheck:
        container = self.watchdog.container if getattr(self, "watchdog", None) is not None else None
        if container is None:
            return HealthCheck(True, "Memory usage: not measured yet")
        return memory_check(container.ratio, self.watchdog.critical_ratio, source=container.source)


async def open_queue(settings: Settings, conninfo: str) -> tuple[AsyncConnectionPool[Any], JobQueue]:
    """A pool and queue for short-lived commands (CLI)."""
    pool = await open_pool(conninfo, settings, max_size=2, name="export-worker-cli")
    return pool, JobQueue(pool, settings.worker.worker_id or default_worker_id(), settings.retry)
