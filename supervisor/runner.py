"""The supervisor: signals, the claim loop, and shutdown. Everything else is a part.

Shaped like gunicorn's arbiter: the signal handler only records the signal and
wakes the loop; one loop claims jobs and hands them to idle children. The parts
(built in supervisor/composition.py) do the rest: the settler settles every job
(supervisor/settle.py), the upkeep loops heartbeat, rescue, reap and clean up
(supervisor/upkeep.py), the watchdog thread enforces memory and deadlines
(supervisor/pool/watchdog.py), and every background task has one owner that logs and
counts its failures (supervisor/tasks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
from collections import deque
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from shared.vocabulary import KillReason, QueueOperation
from supervisor.composition import Overrides, WorkerParts, assemble, http_server
from supervisor.identity import default_worker_id
from supervisor.queue.database import open_pool
from supervisor.queue.jobs import Claim, JobQueue
from supervisor.tasks import OnFailure, TaskOwner
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

EXIT_LOOP_FAILED = 1  # a FATAL loop failed: the platform restarts the container
SETTLE_GRACE_SECONDS = 10  # after the render grace, the most time handing jobs back may take
MIN_CHILD_STOP_SECONDS = 1.0  # a child told to Stop past the grace gets this long before SIGKILL




class Supervisor:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        *,
        child_target: Any = None,
        storage: Any = None,
        mail: Any = None,
        metrics: Metrics | None = None,
        serve_http: bool = True,
        run_migrations: bool = True,
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.worker_id = settings.worker.worker_id or default_worker_id()
        self.metrics = metrics or Metrics()
        self.serve_http = serve_http
        self.overrides = Overrides(child_target, storage, mail, run_migrations)
        self.tasks = TaskOwner(self.metrics, self._loop_failed)
        self._signals: deque[int] = deque()
        self._wake = asyncio.Event()
        self.stopping = False
        self.fast_stop = False
        self.exit_code = 0
        self.started = asyncio.Event()
        self.parts: WorkerParts | None = None
        self.http_server: Any = None
        self.http_port: int | None = None

    # The parts tests and the CLI reach for, by their old names.
    queue = property(lambda self: self._parts.queue)
    pool = property(lambda self: self._parts.pool)
    watchdog = property(lambda self: self._parts.watchdog)
    breaker = property(lambda self: self._parts.breaker)
    outbox = property(lambda self: self._parts.outbox)
    webhooks = property(lambda self: self._parts.webhooks)
    listener = property(lambda self: self._parts.listener)
    storage = property(lambda self: self._parts.storage)
    health = property(lambda self: self._parts.health)
    inflight = property(lambda self: self._parts.settler.inflight)
    workers = property(lambda self: self._parts.workers)
    db_ok = property(lambda self: self._parts.database.ok)

    @property
    def _parts(self) -> WorkerParts:
        if self.parts is None:
            raise AttributeError("the supervisor has not assembled its parts yet")
        return self.parts

    # ---- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._queue_signal, sig)
        try:
            self.parts = await assemble(self.settings, self.conninfo, self.worker_id, self.metrics, self.tasks,
                                        self.overrides)
            if self.serve_http:
                # Bind the port before any child starts: a taken port fails fast and leaves nothing behind.
                await self._start_http()
            self._start_loops(self.parts)
            await self._register(self.parts)
            self.started.set()
            log.info("worker started", extra={"children": self.settings.worker.max_concurrent_renders,
                                              "port": self.http_port, "storage": self.parts.storage.name})
            await self._claim_loop(self.parts)
            await self._shutdown(self.parts)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        log.info("worker stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    def _start_loops(self, parts: WorkerParts) -> None:
        up, restart, fatal = parts.upkeep, OnFailure.RESTART, OnFailure.FATAL
        parts.pool.start()
        parts.watchdog.start()
        if parts.listener is not None:
            listener = parts.listener
            self.tasks.run_loop("listener", listener.run, restart)
            updates = listener.subscribe()
            self.tasks.run_loop("cancel-watch", lambda: up.watch_status(updates), restart)
        self.tasks.run_loop("outbox", parts.outbox.run, restart)
        self.tasks.run_loop("webhooks", parts.webhooks.run, restart)
        self.tasks.run_loop("tick", up.tick_loop, fatal)  # no reaping and no top-up without it
        self.tasks.run_loop("heartbeat", up.heartbeat_loop, restart)
        self.tasks.run_loop("rescue", up.rescue_loop, restart)
        self.tasks.run_loop("retention", up.retention_loop, restart)
        self.tasks.run_loop("stats", up.stats_loop, restart)
        self.tasks.run_loop("sweep", up.sweep_loop, restart)
        self.tasks.run_loop("workers-table", self._beat_loop, restart)

    async def _register(self, parts: WorkerParts) -> None:
        """This process's row before its first claim: the stale rescue tells a claim of a
        previous process under the same WORKER_ID by it (migration 0010)."""
        while not await parts.workers.beat_for(self):
            self._handle_signals()
            if self.stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()  # signals stay queued in self._signals

    async def _beat_loop(self) -> None:
        """This worker's row in the workers table (the console and operators read it)."""
        while True:
            await self._parts.workers.beat_for(self)
            await asyncio.sleep(self.settings.retry.heartbeat_interval_seconds)

    async def _start_http(self) -> None:
        self.http_server = await http_server(self.settings, self.conninfo, self.worker_id, self.metrics,
                                             self._parts, worker=self)
        self.tasks.run_loop("http", self.http_server.serve, OnFailure.FATAL)
        for _ in range(200):
            if self.http_server.started:
                break
            await asyncio.sleep(0.01)
        self.http_port = self.http_server.port

    # ---- signals ---------------------------------------------------------------

    def _queue_signal(self, sig: int) -> None:
        # Only record and wake: the loop does the work (gunicorn's arbiter).
        self._signals.append(sig)
        self._wake.set()

    def request_stop(self, fast: bool = False) -> None:
        self._queue_signal(signal.SIGINT if fast else signal.SIGTERM)
        if fast:
            self._signals.append(signal.SIGTERM)

    def _loop_failed(self, why: str) -> None:
        log.critical("a vital loop failed; stopping the worker so the platform restarts it", extra={"error": why})
        self.exit_code = EXIT_LOOP_FAILED
        self.request_stop(fast=True)

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

    # ---- the claim loop --------------------------------------------------------

    def _may_claim(self, parts: WorkerParts) -> bool:
        if self.stopping or parts.pool.brake.engaged or parts.watchdog.over_high_water:
            return False
        return not (self.settings.worker.enable_canary_export and parts.pool.last_canary_ok is False)

    async def _claim_loop(self, parts: WorkerParts) -> None:
        busy_poll = self.settings.worker.polling_interval_busy_ms / 1000
        idle_poll = self.settings.worker.polling_interval_idle_ms / 1000
        poll = idle_poll
        capacity = parts.settler.capacity
        while True:
            self._handle_signals()
            if self.stopping:
                return
            # Clear the wake-ups before looking: a child freed or a NOTIFY arriving
            # from here on wakes the wait below instead of being lost.
            capacity.clear()
            self._wake.clear()
            if parts.listener is not None:
                parts.listener.job_available.clear()
            free = parts.pool.free_slots() if self._may_claim(parts) else []
            claims: list[Claim] = []
            if free:
                try:
                    claims = await parts.queue.claim(len(free))
                    parts.database.up()
                except Exception as exc:
                    self.metrics.queue_errors.labels(QueueOperation.CLAIM).inc()
                    parts.database.down(exc)
                    await self._wait(parts, busy_poll, queue_was_empty=False)
                    continue
                # Children may have changed while we awaited the claim (a recycle
                # retired one): hand out only to slots that are free now.
                available = parts.pool.free_slots()
                for claim in claims:
                    if available:
                        parts.settler.start(available.pop(0), claim)
                    else:
                        parts.settler.hand_back(claim)
                poll = busy_poll if claims else idle_poll
                if claims and len(claims) == len(free):
                    continue  # there may be more; claim again as slots free up
            await self._wait(parts, poll, queue_was_empty=bool(free) and not claims)

    async def _wait(self, parts: WorkerParts, poll: float, *, queue_was_empty: bool) -> None:
        """Sleep until a NOTIFY, a freed child, a signal, or the poll interval."""
        timeout = poll
        if queue_was_empty:
            with contextlib.suppress(Exception):
                soonest = await parts.queue.next_available_in()
                if soonest is not None:
                    timeout = min(timeout, max(soonest, 0.01))
        events = [parts.settler.capacity, self._wake]
        if parts.listener is not None and queue_was_empty:
            events.append(parts.listener.job_available)
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # ---- shutdown --------------------------------------------------------------

    async def _shutdown(self, parts: WorkerParts) -> None:
        """Finish in-flight renders within the grace, hand back the rest, stop everything."""
        parts.database.stopping = True
        # Children with nothing to do close their Chromium during the grace, not after it.
        parts.pool.begin_stop()
        deadline = time.monotonic() + self.settings.worker.graceful_shutdown_timeout_ms / 1000
        while self.inflight and time.monotonic() < deadline and not self.fast_stop:
            parts.settler.capacity.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(parts.settler.capacity.wait(),
                                       min(0.25, max(deadline - time.monotonic(), 0.01)))
            self._handle_signals()
        # Whatever still renders goes back to pending without spending its attempt.
        for entry in list(self.inflight.values()):
            if entry.handle is not None:
                parts.pool.kill(entry.handle, KillReason.SHUTDOWN)
        settle_deadline = time.monotonic() + SETTLE_GRACE_SECONDS
        while self.inflight and time.monotonic() < settle_deadline:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(parts.watchdog.stop)  # joins its thread: never on the loop
        await parts.pool.stop(grace_seconds=max(MIN_CHILD_STOP_SECONDS, deadline - time.monotonic()))
        log.info("shutdown: render children stopped", extra={"unsettled": len(self.inflight)})
        if self.http_server is not None:
            self.http_server.should_exit = True
        # The HTTP server has its own grace for open requests (uvicorn's timeout_graceful_shutdown).
        await self.tasks.shutdown(keep=frozenset({"http"}),
                                  timeout=self.settings.worker.graceful_shutdown_timeout_ms / 1000 + 10)
        log.info("shutdown: background tasks and HTTP server stopped")
        await parts.db.close()
        # A clean stop leaves no scratch behind; a large tree is removed off the loop.
        await asyncio.to_thread(shutil.rmtree, parts.settler.scratch, ignore_errors=True)


async def open_queue(settings: Settings, conninfo: str) -> tuple[AsyncConnectionPool[Any], JobQueue]:
    """A pool and queue for short-lived commands (CLI)."""
    pool = await open_pool(conninfo, settings, max_size=2, name="export-worker-cli")
    return pool, JobQueue(pool, settings.worker.worker_id or default_worker_id(), settings.retry)
