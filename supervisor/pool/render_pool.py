"""The render pool: spawned children, each owning one Chromium and rendering up to
``slots`` jobs at once, each job in a browser context of its own.

The asyncio side lives here: dispatching jobs into free slots, reading answers by job
id, stopping one job's page, killing a child. Its parts: :mod:`lifecycle` (spawn,
ready, recycle, stop, the brake) and :mod:`reaper` (settle a dead child's jobs, record
its death, clean up). Memory and deadlines are enforced by the watchdog thread
(supervisor/pool/watchdog.py), which kills a page or a tree on its own and tells this
pool through ``loop.call_soon_threadsafe``; the pool then settles the job(s) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from shared.messages import TO_CHILD_ENCODER, RenderJob
from shared.proc_children import process_gone
from shared.vocabulary import KillReason, RecycleReason
from supervisor.pool.answers import ChildMessages, PageVerdict
from supervisor.pool.children import (
    PAGE_KILL_GRACE_SECONDS,
    Assignment,
    ChildHandle,
    ChildState,
    PoolConfig,
    PoolOwner,
    describe_pool,
    export_states,
    wait_exited,
)
from supervisor.pool.lifecycle import Lifecycle, PoolStats
from supervisor.pool.memory import kill_tree
from supervisor.pool.reaper import Reaper, Verdict
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class RenderPool:
    """The only writer of child state: dispatches, reads answers, stops pages, kills children."""

    def __init__(self, config: PoolConfig, owner: PoolOwner, metrics: Metrics | None = None) -> None:
        self.config = config
        self.owner = owner
        self.metrics = metrics
        self.handles: list[ChildHandle] = []
        self.stats = PoolStats()
        self.life = Lifecycle(config, self.handles, self.stats, self._count, self._watch)
        self.reaper = Reaper(self.life, owner, metrics, config.options.scratch_dir, self._mark_killed)
        self.messages = ChildMessages(config, owner, self.life, self.reaper, metrics, self.kill)
        self.brake = self.life.brake
        Path(config.options.scratch_dir).mkdir(parents=True, exist_ok=True)

    @property
    def last_canary_ok(self) -> bool | None:
        return self.messages.last_canary_ok

    @property
    def last_able_at(self) -> float | None:
        return self.life.last_able_at

    @last_able_at.setter
    def last_able_at(self, when: float | None) -> None:
        self.life.last_able_at = when

    @property
    def stopping(self) -> bool:
        return self.life.stopping

    def set_verdicts(self, child: Callable[[ChildHandle], Verdict | None],
                     page: Callable[[ChildHandle, str], PageVerdict | None]) -> None:
        """The watchdog's kills, read when a child's death or answer reaches the loop before its report."""
        self.reaper.kill_verdict = child
        self.messages.page_verdict = page

    def start(self) -> None:
        self.reaper.loop = asyncio.get_running_loop()
        for index in range(self.config.size):
            self.life.spawn(index)

    def _watch(self, handle: ChildHandle) -> None:
        assert self.reaper.loop is not None, "start() first"
        self.reaper.loop.add_reader(handle.conn.fileno(), self.messages.on_readable, handle)

    def begin_stop(self) -> None:
        """No more spawning; idle children stop now, busy ones right after their last answer."""
        self.life.stopping = True
        for handle in self.handles:
            self.life.retire(handle)

    async def stop(self, grace_seconds: float) -> None:
        """Ask every child to stop; kill what is still there after the grace."""
        self.begin_stop()
        await wait_exited(self.handles, grace_seconds)
        for handle in [h for h in self.handles if h.process.is_alive()]:
            self.kill(handle, KillReason.SHUTDOWN)
        await wait_exited(self.handles, 5)  # SIGKILLed trees exit at once; never block the loop
        for handle in list(self.handles):
            self.reaper.reap(handle)
        if self.reaper.cleanups:  # the last children's homes: gone before the worker says it stopped
            await asyncio.wait(self.reaper.cleanups, timeout=grace_seconds + 5)

    def describe(self) -> tuple[bool, str]:
        return describe_pool(self.handles, self.brake)

    def idle_children(self) -> list[ChildHandle]:
        return [h for h in self.handles if h.state is ChildState.IDLE and not h.retire_requested]

    def busy_children(self) -> list[ChildHandle]:
        return [h for h in self.handles if h.state is ChildState.BUSY]

    def active_jobs(self) -> int:
        return sum(len(h.assignments) for h in self.handles)

    def free_slots(self) -> list[ChildHandle]:
        """One entry per job that may start now, least loaded children first, within
        MAX_CONCURRENT_RENDERS in all."""
        room = self.config.total - self.active_jobs()
        # a child whose browser just died has not exited yet: a job sent there would die with it
        able = (h for h in self.handles if h.free_slots and not (h.browser_pid and process_gone(h.browser_pid)))
        children = sorted(able, key=lambda h: len(h.assignments))
        spread = [h for depth in range(self.config.slots) for h in children if h.free_slots > depth]
        return spread[: max(room, 0)]

    def dispatch(self, handle: ChildHandle, job: RenderJob, context: object) -> None:
        now = time.monotonic()
        handle.assignments[job.job_id] = Assignment(job, context, now, now + self.config.job_timeout_seconds)
        handle.state = ChildState.BUSY
        try:
            handle.conn.send_bytes(TO_CHILD_ENCODER.encode(job))
        except OSError:
            self.kill(handle, KillReason.CRASHED, "pipe closed at dispatch")

    def kill(self, handle: ChildHandle, reason: KillReason, detail: str = "", culprit: str | None = None) -> None:
        """Kill a child's whole tree and settle its jobs now (the others are spared when
        the kill is for ``culprit``'s sake)."""
        self._mark_killed(handle, reason, detail, culprit)
        if handle.pid:
            kill_tree(handle.pid)
        self.reaper.reap(handle)

    def stop_job(self, handle: ChildHandle, job_id: str, reason: KillReason, detail: str = "") -> None:
        """Stop one job's page (its renderer process) and settle the job for ``reason`` when
        the child answers; the child and its other jobs go on. Without a known renderer,
        the child goes, for this job's sake."""
        assignment = handle.assignments.get(job_id)
        if assignment is None or assignment.kill_reason is not None:
            return
        if not assignment.renderer_pid:
            self.kill(handle, reason, detail, culprit=job_id)
            return
        self.on_page_killed(handle, job_id, reason, detail)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(assignment.renderer_pid, signal.SIGKILL)

    def on_page_killed(self, handle: ChildHandle, job_id: str, reason: KillReason, detail: str) -> None:
        """A job's renderer was killed (here, or by the watchdog, posted to the loop)."""
        assignment = handle.assignments.get(job_id)
        if assignment is None or assignment.kill_reason is not None:
            return
        assignment.kill_reason, assignment.kill_detail = reason, detail
        assignment.kill_deadline = time.monotonic() + PAGE_KILL_GRACE_SECONDS
        self._count(self.stats.kills, "child_kills", reason)
        log.warning("render page killed", extra={"child": handle.name, "reason": reason, "detail": detail,
                                                 "job_id": job_id})

    def on_watchdog_kill(self, handle: ChildHandle, reason: KillReason, detail: str, culprit: str | None) -> None:
        """The watchdog thread killed a tree (posted to the loop): record why, settle at once."""
        self._mark_killed(handle, reason, detail, culprit)
        log.warning("render child killed", extra={"child": handle.name, "reason": reason, "detail": detail,
                                                  "job_id": culprit})
        self.reaper.reap(handle)

    def on_child_grew(self, handle: ChildHandle, detail: str) -> None:
        """The watchdog saw the child's own processes (browser, driver, itself) grow: replace it."""
        if handle.state is ChildState.DEAD or handle.retire_requested:
            return
        log.warning("render child grew; recycling it", extra={"child": handle.name, "detail": detail})
        self.life.start_recycle(handle, RecycleReason.MEMORY)

    def _mark_killed(self, handle: ChildHandle, reason: KillReason, detail: str, culprit: str | None) -> None:
        if handle.kill_reason is None:
            handle.kill_reason, handle.kill_detail, handle.culprit = reason, detail, culprit
            self._count(self.stats.kills, "child_kills", reason)

    def tick(self) -> None:
        """Called every watchdog interval on the event loop: reap, time out boots and stops, top up."""
        now = time.monotonic()
        for handle in list(self.handles):
            if not handle.process.is_alive() or handle.kill_reason is not None:
                self.reaper.reap(handle)
            elif handle.state in (ChildState.BOOTING, ChildState.CANARY) and now > handle.boot_deadline:
                self.messages.boot_failed(handle, f"no ready signal within {self.config.boot_timeout_seconds:.0f}s")
            elif handle.state is ChildState.STOPPING and now > handle.stop_sent_at + self.config.stop_grace_seconds:
                self.kill(handle, KillReason.UNRESPONSIVE, "ignored Stop")
            elif self.life.due(handle, now):
                self.life.start_recycle(handle)
        self.life.top_up()
        if any(h.state in (ChildState.IDLE, ChildState.BUSY) for h in self.handles):
            self.life.last_able_at = now
        if self.metrics is not None:
            export_states(self.handles, self.metrics)

    def _count(self, bucket: dict[str, int], metric: str, reason: str) -> None:
        bucket[reason] = bucket.get(reason, 0) + 1
        if self.metrics is None:
            return
        counter = self.metrics.child_kills if metric == "child_kills" else self.metrics.child_recycles
        counter.labels(reason).inc()
