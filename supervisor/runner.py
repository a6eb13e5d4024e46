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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from shared.vocabulary import QueueOperation
from supervisor.composition import Overrides, WorkerParts, assemble, start_http, start_loops
from supervisor.delivery.mail import MailBackend
from supervisor.delivery.storage import Storage
from supervisor.identity import default_worker_id
from supervisor.pool.children import ChildTarget
from supervisor.queue.database import open_pool
from supervisor.queue.jobs import Claim, JobQueue
from supervisor.settle import drain
from supervisor.tasks import TaskOwner
from supervisor.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from supervisor.http.app import HttpServer

log = logging.getLogger(__name__)

EXIT_LOOP_FAILED = 1  # a FATAL loop failed: the platform restarts the container
MIN_CHILD_STOP_SECONDS = 1.0  # a child told to Stop past the grace gets this long before SIGKILL
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)




class Supervisor:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        *,
        child_target: ChildTarget | None = None,
        storage: Storage | None = None,
        mail: MailBackend | None = None,
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
        self._parts: WorkerParts | None = None
        self.http_server: HttpServer | None = None
        self.http_port: int | None = None
        self._stop_deadline = 0.0  # the end of the shutdown grace (monotonic), set when the drain starts

    @property
    def parts(self) -> WorkerParts:
        """The worker's parts, typed (supervisor/composition.py), once run() has assembled them."""
        if self._parts is None:
            raise RuntimeError("the supervisor has not assembled its parts yet")
        return self._parts

    # ---- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        """One exit stack owns every part: whatever was started is stopped, in reverse, however run() ends."""
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(signal_handlers(self._queue_signal))
            parts = self._parts = await assemble(self.settings, self.conninfo, self.worker_id, self.metrics,
                                                self.tasks, self.overrides, stopping=lambda: self.stopping)
            stack.push_async_callback(self._remove_scratch, parts)
            stack.push_async_callback(parts.db.close)
            stack.push_async_callback(self._stop_tasks)  # the HTTP server's open requests get its own grace
            if self.serve_http:
                # Bind the port before any child starts: a taken port fails fast and leaves nothing behind.
                self.http_server = await start_http(self.settings, self.conninfo, self.worker_id, self.metrics,
                                                    parts, self.tasks)
                self.http_port = self.http_server.port
                stack.callback(self.http_server.begin_stop)
            parts.pool.start()
            stack.push_async_callback(self._stop_children, parts)
            parts.watchdog.start()
            stack.push_async_callback(asyncio.to_thread, parts.watchdog.stop)  # joins its thread: off the loop
            start_loops(parts, self.tasks, self.settings)
            await self._register(parts)
            self.started.set()
            log.info("worker started", extra={"children": self.settings.worker.max_concurrent_renders,
                                              "port": self.http_port, "storage": parts.storage.name})
            await self._claim_loop(parts)
            await self._drain(parts)
        log.info("worker stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    async def _register(self, parts: WorkerParts) -> None:
        """This process's row before its first claim: the stale rescue tells a claim of a
        previous process under the same WORKER_ID by it (migration 0010)."""
        while not await parts.state.beat():
            self._handle_signals()
            if self.stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()  # signals stay queued in self._signals

    async def _stop_tasks(self) -> None:
        # The HTTP task is not cancelled: uvicorn ends it within its own graceful timeout.
        await self.tasks.shutdown(keep=frozenset({"http"}),
                                  timeout=self.settings.worker.graceful_shutdown_timeout_ms / 1000 + 10)
        log.info("shutdown: background tasks and HTTP server stopped")

    async def _stop_children(self, parts: WorkerParts) -> None:
        await parts.pool.stop(grace_seconds=max(MIN_CHILD_STOP_SECONDS, self._stop_deadline - time.monotonic()))
        log.info("shutdown: render children stopped", extra={"unsettled": len(parts.settler.inflight)})

    @staticmethod
    async def _remove_scratch(parts: WorkerParts) -> None:
        # A clean stop leaves no scratch behind; a large tree is removed off the loop.
        await asyncio.to_thread(shutil.rmtree, parts.settler.scratch, ignore_errors=True)

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

    def _fast_stop_requested(self) -> bool:
        self._handle_signals()
        return self.fast_stop

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if self.stopping:
                self.fast_stop = True
                log.warning("second signal: stopping fast", extra={"signal": signal.Signals(sig).name})
            else:
                self.stopping = True
                in_flight = len(self._parts.settler.inflight) if self._parts is not None else 0
                log.info("signal received: no more claims, finishing in-flight jobs",
                         extra={"signal": signal.Signals(sig).name, "in_flight": in_flight})

    # ---- the claim loop --------------------------------------------------------

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
            free = parts.pool.free_slots() if parts.state.gate.may_claim() else []
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

    async def _drain(self, parts: WorkerParts) -> None:
        """Finish in-flight renders within the grace and hand back the rest; the exit stack stops the parts."""
        parts.database.stopping = True
        # Children with nothing to do close their Chromium during the grace, not after it.
        parts.pool.begin_stop()
        self._stop_deadline = time.monotonic() + self.settings.worker.graceful_shutdown_timeout_ms / 1000
        await drain(parts.settler, parts.pool, self._stop_deadline, self._wake, self._fast_stop_requested)

@contextlib.contextmanager
def signal_handlers(handler: Callable[[int], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call `handler` (which only queues) while the worker runs."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler, sig)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def open_queue(settings: Settings, conninfo: str) -> tuple[AsyncConnectionPool[Any], JobQueue]:
    """A pool and queue for short-lived commands (CLI)."""
    pool = await open_pool(conninfo, settings, max_size=2, name="export-worker-cli")
    return pool, JobQueue(pool, settings.worker.worker_id or default_worker_id(), settings.retry)
