"""Every background task of the supervisor has one owner, and no failure goes unseen.

Two kinds of task (pgqueuer's task manager, with a policy per loop):

- Loops (`run_loop`): long-lived, one per concern. When one raises, the failure is
  logged with its traceback and counted in ``export_background_failures_total``;
  then the loop's policy decides: ``RESTART`` runs it again after a backoff
  (doubling to a cap, reset once it has run for a while), ``FATAL`` stops the
  worker with exit code 1 so the platform restarts the container.
- One-off tasks (`spawn`): settling a job, reviving the database. A failure is
  logged and counted; the task is gone either way.

``shutdown`` cancels everything that is left and waits for it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from supervisor.telemetry import error_reporting
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

RESTART_BACKOFF_START = 0.5
RESTART_BACKOFF_CAP = 30.0
HEALTHY_RUN_SECONDS = 60.0  # a loop that ran this long before failing starts its backoff afresh
SHUTDOWN_WAIT_SECONDS = 15.0  # cancelled tasks end at once; the HTTP server waits for its requests


class OnFailure(enum.Enum):
    RESTART = "restart"
    FATAL = "fatal"


class TaskOwner:
    def __init__(self, metrics: Metrics, on_fatal: Callable[[str], None]) -> None:
        self.metrics = metrics
        self._on_fatal = on_fatal
        self._tasks: set[asyncio.Task[Any]] = set()

    def run_loop(self, name: str, body: Callable[[], Awaitable[None]], policy: OnFailure) -> None:
        """Run `body` (a coroutine function that loops forever) under `policy`."""
        self.metrics.task_known(name)
        self._track(asyncio.create_task(self._supervise(name, body, policy), name=name))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, kind: str | None = None) -> None:
        """Run a one-off task; its failure is logged (under `name`) and counted (under `kind`), never lost.

        `kind` is the metric label: one per sort of task (``settle``), never per job,
        so the label set stays bounded.
        """
        self.metrics.task_known(kind or name)
        task = asyncio.create_task(coro, name=name)
        self._track(task)
        task.add_done_callback(lambda done: self._report(done, kind or name))

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def shutdown(self, keep: frozenset[str] = frozenset(), timeout: float = SHUTDOWN_WAIT_SECONDS) -> None:
        """Cancel every task not named in `keep`, and wait up to `timeout` for all of them to end.

        A task still running after that is named in a warning and left behind: a stop
        must end, and the log must say what held it up.
        """
        for task in list(self._tasks):
            if task.get_name() not in keep:
                task.cancel()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if pending:
            log.warning("shutdown: background tasks did not end in time",
                        extra={"tasks": sorted(t.get_name() for t in pending), "waited_s": timeout})

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, task: asyncio.Task[Any], kind: str) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._failed(task.get_name(), task.exception(), kind)

    def _failed(self, name: str, exc: BaseException | None, kind: str | None = None) -> None:
        self.metrics.background_failures.labels(kind or name).inc()
        if exc is not None:
            error_reporting.report_exception(exc, task=kind or name)
        log.error("background task failed", exc_info=exc, extra={"task": name, "error": repr(exc)})

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]], policy: OnFailure) -> None:
        backoff = RESTART_BACKOFF_START
        while True:
            started = time.monotonic()
            try:
                await body()
                return  # a loop that ends on its own is done
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(name, exc)
                if policy is OnFailure.FATAL:
                    self._on_fatal(f"{name} loop failed: {exc!r}")
                    return
            if time.monotonic() - started >= HEALTHY_RUN_SECONDS:
                backoff = RESTART_BACKOFF_START
            log.warning("restarting background loop", extra={"task": name, "retry_in_ms": round(backoff * 1000)})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_CAP)
