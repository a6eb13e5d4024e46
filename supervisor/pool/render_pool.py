"""The render pool: spawned children, each owning one Chromium.

The asyncio side lives here: spawning, reading answers, reaping, recycling with
a warm replacement, the restart-storm brake. Memory and deadlines are enforced
by the watchdog thread (supervisor/pool/watchdog.py), which kills a tree on its own
and tells this pool through ``loop.call_soon_threadsafe``; the pool then settles
the job (through the owner's callbacks) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from shared.messages import (
    EX_BOOT_FAILED,
    FROM_CHILD_DECODER,
    TO_CHILD_ENCODER,
    BootFailed,
    FromChild,
    Log,
    Ready,
    Rendered,
    RenderFailed,
    RenderJob,
    Stop,
)
from shared.vocabulary import KillReason, RecycleReason
from supervisor.pool.children import (
    Assignment,
    BootBrake,
    ChildHandle,
    ChildLost,
    ChildState,
    PoolConfig,
    PoolOwner,
    close_pipe,
    death_reason,
    describe_pool,
    export_states,
    log_death,
    relay_log,
    remove_chromium_home,
    send_canary,
    spawn_child,
    wait_exited,
)
from supervisor.pool.memory import kill_tree

log = logging.getLogger(__name__)

@dataclass
class PoolStats:
    kills: dict[str, int] = field(default_factory=dict)
    recycles: dict[str, int] = field(default_factory=dict)
    deaths: dict[str, int] = field(default_factory=dict)
    boot_failures: int = 0
    canary_failures: int = 0


class RenderPool:
    """The only writer of child state: spawns, reads answers, reaps, recycles, tops up."""

    def __init__(self, config: PoolConfig, owner: PoolOwner, metrics: Any = None) -> None:
        self.config = config
        self.owner = owner
        self.metrics = metrics
        self.handles: list[ChildHandle] = []
        self.stats = PoolStats()
        self.brake = BootBrake(config.storm_limit, config.storm_window_seconds)
        self._ctx = multiprocessing.get_context("spawn")
        self._generations: dict[int, int] = {}
        self.last_canary_ok: bool | None = None
        self.last_able_at: float | None = None  # when a child last could render (idle or busy)
        self.kill_verdict: Callable[[ChildHandle], tuple[KillReason, str] | None] = lambda handle: None
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cleanups: set[asyncio.Future[None]] = set()  # dead children's homes being removed
        Path(config.options.scratch_dir).mkdir(parents=True, exist_ok=True)


    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for index in range(self.config.size):
            self._spawn(index)

    def _spawn(self, index: int, replacement_for: ChildHandle | None = None) -> ChildHandle:
        generation = self._generations.get(index, 0) + 1
        self._generations[index] = generation
        handle = spawn_child(self._ctx, self.config, index, generation, replacement_for)
        self.handles.append(handle)
        assert self._loop is not None
        self._loop.add_reader(handle.conn.fileno(), self._on_readable, handle)
        log.debug("spawned render child", extra={"child": handle.name, "pid": handle.pid})
        return handle

    def begin_stop(self) -> None:
        """No more spawning; idle children stop now, busy ones right after their answer."""
        self.stopping = True
        for handle in self.handles:
            self._send_stop(handle)

    async def stop(self, grace_seconds: float) -> None:
        """Ask every child to stop; kill what is still there after the grace."""
        self.begin_stop()
        await wait_exited(self.handles, grace_seconds)
        for handle in [h for h in self.handles if h.process.is_alive()]:
            self.kill(handle, KillReason.SHUTDOWN)
        await wait_exited(self.handles, 5)  # SIGKILLed trees exit at once; never block the loop
        for handle in list(self.handles):
            self._reap(handle)
        if self._cleanups:  # the last children's homes: gone before the worker says it stopped
            await asyncio.wait(self._cleanups, timeout=grace_seconds + 5)

    def describe(self) -> tuple[bool, str]:
        return describe_pool(self.handles, self.brake)


    def idle_children(self) -> list[ChildHandle]:
        return [h for h in self.handles if h.state is ChildState.IDLE and not h.retire_requested]

    def busy_children(self) -> list[ChildHandle]:
        return [h for h in self.handles if h.state is ChildState.BUSY]

    def dispatch(self, handle: ChildHandle, job: RenderJob, context: Any) -> None:
        now = time.monotonic()
        handle.assignment = Assignment(job, context, now, now + self.config.job_timeout_seconds)
        handle.state = ChildState.BUSY
        try:
            handle.conn.send_bytes(TO_CHILD_ENCODER.encode(job))
        except OSError:
            self.kill(handle, KillReason.CRASHED, "pipe closed at dispatch")

    def kill(self, handle: ChildHandle, reason: KillReason, detail: str = "") -> None:
        """Kill a child's whole tree and settle its job (if any) now."""
        self._mark_killed(handle, reason, detail)
        if handle.pid:
            kill_tree(handle.pid)
        self._reap(handle)

    def on_watchdog_kill(self, handle: ChildHandle, reason: KillReason, detail: str) -> None:
        """The watchdog thread killed a tree (posted to the loop): record why, settle at once."""
        self._mark_killed(handle, reason, detail)
        log.warning(
            "render child killed",
            extra={"child": handle.name, "reason": reason, "detail": detail,
                   "job_id": handle.assignment.job.job_id if handle.assignment else None},
        )
        self._reap(handle)

    def _mark_killed(self, handle: ChildHandle, reason: KillReason, detail: str) -> None:
        if handle.kill_reason is None:
            handle.kill_reason, handle.kill_detail = reason, detail
            self._count(self.stats.kills, "child_kills", reason)


    def _on_readable(self, handle: ChildHandle) -> None:
        try:
            while handle.conn.poll():
                self._handle_message(handle, FROM_CHILD_DECODER.decode(handle.conn.recv_bytes()))
        except (EOFError, OSError) as exc:
            log.debug("render child pipe closed", extra={"child": handle.name, "error": repr(exc),
                                                          "state": handle.state.value})
            close_pipe(handle, self._loop)
            self._reap(handle)
        except msgspec.DecodeError:
            log.error("render child sent garbage; killing it", extra={"child": handle.name})
            self.kill(handle, KillReason.CRASHED, "protocol error")

    def _handle_message(self, handle: ChildHandle, message: FromChild) -> None:
        match message:
            case Log():
                relay_log(handle, message)
            case Ready():
                handle.browser_version = message.browser_version
                if self.config.canary:
                    if not send_canary(handle, self.config.options.scratch_dir):
                        self._boot_failed(handle, "child died before its canary")
                else:
                    self._became_ready(handle)
            case BootFailed():
                self._boot_failed(handle, message.message)
            case Rendered() | RenderFailed():
                self._on_answer(handle, message)

    def _on_answer(self, handle: ChildHandle, message: Rendered | RenderFailed) -> None:
        if handle.state is ChildState.CANARY:
            with contextlib.suppress(OSError):
                os.unlink(handle.canary_path)
            self.last_canary_ok = isinstance(message, Rendered)
            if isinstance(message, Rendered):
                self._became_ready(handle)
            else:
                self.stats.canary_failures += 1
                self._boot_failed(handle, f"canary render failed: {message.message}")
            return
        assignment = handle.assignment
        if assignment is None or handle.kill_reason is not None:
            return  # a late answer from a child we already gave up on
        handle.assignment = None
        handle.renders += 1
        handle.state = ChildState.IDLE
        if isinstance(message, Rendered):
            self.owner.on_rendered(handle, assignment, message)
        else:
            self.owner.on_render_failed(handle, assignment, message)
        if handle.retire_requested:
            self._send_stop(handle)
        elif handle.due_for_recycle and not self.stopping:
            self._start_recycle(handle)
        self.owner.on_capacity()

    def _became_ready(self, handle: ChildHandle) -> None:
        handle.state = ChildState.IDLE
        self.last_able_at = time.monotonic()
        self.brake.booted()
        old = handle.replacement_for
        if old is not None:
            handle.replacement_for = None
            if old.state is ChildState.BUSY:
                old.retire_requested = True
            else:
                self._send_stop(old)
        self.owner.on_capacity()


    def _start_recycle(self, handle: ChildHandle) -> None:
        """Warm a replacement first; the old child keeps working until it is ready."""
        if any(h.replacement_for is handle for h in self.handles):
            return
        self._count(self.stats.recycles, "child_recycles",
                    RecycleReason.RENDERS if handle.renders >= handle.render_budget else RecycleReason.AGE)
        self._spawn(handle.index, replacement_for=handle)

    def _send_stop(self, handle: ChildHandle) -> None:
        handle.retire_requested = True
        if handle.state in (ChildState.DEAD, ChildState.STOPPING) or handle.assignment is not None:
            return
        handle.state = ChildState.STOPPING
        handle.stop_sent_at = time.monotonic()
        with contextlib.suppress(OSError):
            handle.conn.send_bytes(TO_CHILD_ENCODER.encode(Stop()))

    def _boot_failed(self, handle: ChildHandle, message: str) -> None:
        self._count_boot_failure(message)
        self._mark_killed(handle, KillReason.BOOT_FAILED, message)
        if handle.pid:
            kill_tree(handle.pid)
        self._reap(handle)

    def _count_boot_failure(self, message: str) -> None:
        self.stats.boot_failures += 1
        if self.metrics is not None:
            self.metrics.child_boot_failures.inc()
        self.brake.failed(message)

    def _reap(self, handle: ChildHandle) -> None:
        """Settle a dead or dying child's job now; free its slot once its process is gone (a later tick)."""
        if handle.state is ChildState.DEAD:
            return
        if handle.state in (ChildState.IDLE, ChildState.BUSY):
            self.last_able_at = time.monotonic()  # it could render until now, even between two ticks
        verdict = self.kill_verdict(handle)  # the watchdog's kill, not reported on the loop yet
        if verdict is not None:
            self._mark_killed(handle, *verdict)
        alive = handle.process.is_alive()  # also reaps the exit status (waitpid WNOHANG)
        if alive and handle.kill_reason is None and handle.pipe_open:
            return
        if alive:
            kill_tree(handle.pid)  # pipe closed or killed: the whole tree goes
        exitcode = handle.process.exitcode
        assignment, handle.assignment = handle.assignment, None
        if assignment is not None:
            reason = handle.kill_reason or KillReason.CRASHED
            self.owner.on_child_lost(handle, assignment, ChildLost(reason, handle.kill_detail, exitcode))
        if alive and handle.process.is_alive():
            return  # the next tick finishes the reaping
        close_pipe(handle, self._loop)
        was, handle.state = handle.state, ChildState.DEAD
        self._record_death(handle, was)
        with contextlib.suppress(ValueError):
            self.handles.remove(handle)
        self._remove_home(handle)
        if was in (ChildState.BOOTING, ChildState.CANARY) and handle.kill_reason is None \
                and exitcode != EX_BOOT_FAILED:  # EX_BOOT_FAILED was counted from its BootFailed
            self._count_boot_failure(f"child exited with {exitcode} while starting")
        if not self.stopping and not any(h.index == handle.index for h in self.handles) and not self.brake.engaged:
            self._spawn(handle.index)  # when braked, the tick tops up once it releases
        self.owner.on_capacity()


    def _remove_home(self, handle: ChildHandle) -> None:
        """Kill what re-parented out of a dead child's tree and remove its Chromium home: a
        scan of every process and a tree removal, so off the loop, with any failure logged."""
        if self._loop is None:
            remove_chromium_home(handle, self.config.options.scratch_dir)
            return
        cleanup = self._loop.run_in_executor(None, remove_chromium_home, handle, self.config.options.scratch_dir)
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanup_done)

    def _cleanup_done(self, cleanup: asyncio.Future[None]) -> None:
        self._cleanups.discard(cleanup)
        if not cleanup.cancelled() and cleanup.exception() is not None:
            log.error("removing a dead child's Chromium home failed", exc_info=cleanup.exception())

    def _record_death(self, handle: ChildHandle, was: ChildState) -> None:
        reason = death_reason(handle, was, self.stopping)
        self.stats.deaths[reason] = self.stats.deaths.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.child_deaths.labels(reason).inc()
        log_death(handle, reason, handle.process.exitcode)

    def tick(self) -> None:
        """Called every watchdog interval on the event loop: reap, time out boots, top up."""
        now = time.monotonic()
        for handle in list(self.handles):
            if not handle.process.is_alive() or handle.kill_reason is not None:
                self._reap(handle)
            elif handle.state in (ChildState.BOOTING, ChildState.CANARY) and now > handle.boot_deadline:
                self._boot_failed(handle, f"no ready signal within {self.config.boot_timeout_seconds:.0f}s")
            elif handle.state is ChildState.STOPPING and now > handle.stop_sent_at + self.config.stop_grace_seconds:
                self.kill(handle, KillReason.UNRESPONSIVE, "ignored Stop")
            elif (handle.state is ChildState.IDLE and not handle.retire_requested and now >= handle.retire_at
                  and not self.stopping and not self.brake.engaged):
                self._start_recycle(handle)  # an idle child ages out too, not only after its next render
        if not self.stopping and not self.brake.engaged:
            present = {h.index for h in self.handles}
            for index in range(self.config.size):
                if index not in present:
                    self._spawn(index)
        if any(h.state in (ChildState.IDLE, ChildState.BUSY) for h in self.handles):
            self.last_able_at = now
        if self.metrics is not None:
            export_states(self.handles, self.metrics)

    def _count(self, bucket: dict[str, int], metric: str, reason: str) -> None:
        bucket[reason] = bucket.get(reason, 0) + 1
        if self.metrics is not None:
            getattr(self.metrics, metric).labels(reason).inc()
