"""Reaping inside the pool: a dead or dying child's jobs are settled at once, its death is
recorded, and what it left (re-parented helpers, its Chromium home) is removed off the loop.

One part of :class:`~supervisor.pool.render_pool.RenderPool`, its only caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from shared.messages import EX_BOOT_FAILED
from shared.vocabulary import KillReason
from supervisor.pool.children import (
    ChildHandle,
    ChildLost,
    ChildState,
    PoolOwner,
    close_pipe,
    death_reason,
    log_death,
    remove_chromium_home,
)
from supervisor.pool.lifecycle import Lifecycle
from supervisor.pool.memory import kill_tree
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Verdict = tuple[KillReason, str, "str | None"]  # (reason, detail, the culprit job or None)


class Reaper:
    def __init__(self, lifecycle: Lifecycle, owner: PoolOwner, metrics: Metrics | None, scratch_dir: str,
                 mark_killed: Callable[[ChildHandle, KillReason, str, str | None], None]) -> None:
        self.lifecycle = lifecycle
        self.owner = owner
        self.metrics = metrics
        self.scratch_dir = scratch_dir
        self.mark_killed = mark_killed
        self.kill_verdict: Callable[[ChildHandle], Verdict | None] = lambda handle: None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cleanups: set[asyncio.Future[None]] = set()  # dead children's homes being removed

    def reap(self, handle: ChildHandle) -> None:
        """Settle a dead or dying child's jobs now; free its place once its process is gone (a later tick)."""
        if handle.state is ChildState.DEAD:
            return
        if handle.state in (ChildState.IDLE, ChildState.BUSY):
            self.lifecycle.last_able_at = time.monotonic()  # it could render until now, even between ticks
        verdict = self.kill_verdict(handle)  # the watchdog's kill, not reported on the loop yet
        if verdict is not None:
            self.mark_killed(handle, *verdict)
        alive = handle.process.is_alive()  # also reaps the exit status (waitpid WNOHANG)
        if alive and handle.kill_reason is None and handle.pipe_open:
            return
        if alive:
            kill_tree(handle.pid)  # pipe closed or killed: the whole tree goes
        self._settle_jobs(handle, handle.process.exitcode)
        if alive and handle.process.is_alive():
            return  # the next tick finishes the reaping
        self._bury(handle)

    def _settle_jobs(self, handle: ChildHandle, exitcode: int | None) -> None:
        """Every job the child held: lost for its own page's reason, for the child's, or
        spared (back to pending, no attempt spent) when the child died for another job."""
        jobs, handle.assignments = handle.assignments, {}
        reason = handle.kill_reason or KillReason.CRASHED
        for job_id, assignment in jobs.items():
            if assignment.kill_reason is not None:
                lost = ChildLost(assignment.kill_reason, assignment.kill_detail, exitcode)
            else:
                if handle.culprit is not None and handle.culprit != job_id:
                    why = f"its render child was killed for job {handle.culprit} ({reason}: {handle.kill_detail})"
                    lost = ChildLost(reason, why, exitcode, spared=True)
                else:
                    lost = ChildLost(reason, handle.kill_detail, exitcode)
            self.owner.on_child_lost(handle, assignment, lost)

    def _bury(self, handle: ChildHandle) -> None:
        close_pipe(handle, self.loop)
        was, handle.state = handle.state, ChildState.DEAD
        self._record_death(handle, was)
        with contextlib.suppress(ValueError):
            self.lifecycle.handles.remove(handle)
        self._remove_home(handle)
        exitcode = handle.process.exitcode
        if was in (ChildState.BOOTING, ChildState.CANARY) and handle.kill_reason is None \
                and exitcode != EX_BOOT_FAILED:  # EX_BOOT_FAILED was counted from its BootFailed
            self.lifecycle.count_boot_failure(f"child exited with {exitcode} while starting", self.metrics)
        if not any(h.index == handle.index for h in self.lifecycle.handles):
            self.lifecycle.top_up()  # when braked, the tick tops up once it releases
        self.owner.on_capacity()

    def _remove_home(self, handle: ChildHandle) -> None:
        """Kill what re-parented out of a dead child's tree and remove its Chromium home: a
        scan of every process and a tree removal, so off the loop, with any failure logged."""
        if self.loop is None:
            remove_chromium_home(handle, self.scratch_dir)
            return
        cleanup = self.loop.run_in_executor(None, remove_chromium_home, handle, self.scratch_dir)
        self.cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanup_done)

    def _cleanup_done(self, cleanup: asyncio.Future[None]) -> None:
        self.cleanups.discard(cleanup)
        if not cleanup.cancelled() and cleanup.exception() is not None:
            log.error("removing a dead child's Chromium home failed", exc_info=cleanup.exception())

    def _record_death(self, handle: ChildHandle, was: ChildState) -> None:
        reason = death_reason(handle, was, self.lifecycle.stopping)
        stats = self.lifecycle.stats
        stats.deaths[reason] = stats.deaths.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.child_deaths.labels(reason).inc()
        log_death(handle, reason, handle.process.exitcode)
