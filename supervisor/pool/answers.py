"""What a child says, inside the pool: its log lines, Ready, its canary, each job's start
and answer by job id. One part of :class:`~supervisor.pool.render_pool.RenderPool`,
which owns it and calls it when a child's pipe is readable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import msgspec

from shared.messages import FROM_CHILD_DECODER, BootFailed, FromChild, Log, Ready, Rendered, RenderFailed, Started
from shared.vocabulary import KillReason
from supervisor.pool.children import (
    ChildHandle,
    ChildLost,
    ChildState,
    PoolConfig,
    PoolOwner,
    close_pipe,
    relay_log,
    send_canary,
)
from supervisor.pool.lifecycle import Lifecycle
from supervisor.pool.reaper import Reaper
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
PageVerdict = tuple[KillReason, str]
Kill = Callable[[ChildHandle, KillReason, str], None]


class ChildMessages:
    def __init__(self, config: PoolConfig, owner: PoolOwner, life: Lifecycle, reaper: Reaper,
                 metrics: Metrics | None, kill: Kill) -> None:
        self.config = config
        self.owner = owner
        self.life = life
        self.reaper = reaper
        self.metrics = metrics
        self.kill = kill
        self.last_canary_ok: bool | None = None
        self.page_verdict: Callable[[ChildHandle, str], PageVerdict | None] = lambda handle, job_id: None

    def on_readable(self, handle: ChildHandle) -> None:
        try:
            while handle.conn.poll():
                self._handle_message(handle, FROM_CHILD_DECODER.decode(handle.conn.recv_bytes()))
        except (EOFError, OSError) as exc:
            log.debug("render child pipe closed", extra={"child": handle.name, "error": repr(exc),
                                                          "state": handle.state.value})
            close_pipe(handle, self.reaper.loop)
            self.reaper.reap(handle)
        except msgspec.DecodeError:
            log.error("render child sent garbage; killing it", extra={"child": handle.name})
            self.kill(handle, KillReason.CRASHED, "protocol error")

    def _handle_message(self, handle: ChildHandle, message: FromChild) -> None:
        match message:
            case Log():
                relay_log(handle, message)
            case Started():
                assignment = handle.assignments.get(message.job_id)
                if assignment is not None:
                    assignment.renderer_pid = message.renderer_pid
            case Ready():
                handle.browser_version, handle.browser_pid = message.browser_version, message.browser_pid
                handle.slots = max(1, min(message.slots, self.config.slots))
                if not self.config.canary:
                    self._became_ready(handle)
                elif not send_canary(handle, self.config.options.scratch_dir):
                    self.boot_failed(handle, "child died before its canary")
            case BootFailed():
                self.boot_failed(handle, message.message)
            case Rendered() | RenderFailed() if handle.state is ChildState.CANARY:
                self._on_canary(handle, message)
            case Rendered() | RenderFailed():
                self._on_answer(handle, message)

    def _on_canary(self, handle: ChildHandle, message: Rendered | RenderFailed) -> None:
        with contextlib.suppress(OSError):
            os.unlink(handle.canary_path)
        self.last_canary_ok = isinstance(message, Rendered)
        if isinstance(message, Rendered):
            self._became_ready(handle)
        else:
            self.boot_failed(handle, f"canary render failed: {message.message}")

    def _on_answer(self, handle: ChildHandle, message: Rendered | RenderFailed) -> None:
        if handle.kill_reason is not None or self.reaper.kill_verdict(handle) is not None:
            return  # a child we already gave up on: the reaping settles its jobs
        assignment = handle.assignments.pop(message.job_id, None)
        if assignment is None:
            return  # a late answer for a job settled already
        handle.renders += 1
        if not handle.assignments:
            handle.state = ChildState.IDLE
        verdict = self.page_verdict(handle, message.job_id)
        if assignment.kill_reason is None and verdict is not None:
            assignment.kill_reason, assignment.kill_detail = verdict
        if assignment.kill_reason is not None:
            self.owner.on_child_lost(handle, assignment, ChildLost(assignment.kill_reason, assignment.kill_detail))
        elif isinstance(message, Rendered):
            self.owner.on_rendered(handle, assignment, message)
        else:
            self.owner.on_render_failed(handle, assignment, message)
        self._after_answer(handle)

    def _after_answer(self, handle: ChildHandle) -> None:
        if handle.retire_requested:
            self.life.retire(handle)
        elif handle.due_for_recycle and not self.life.stopping:
            self.life.start_recycle(handle)
        self.owner.on_capacity()

    def _became_ready(self, handle: ChildHandle) -> None:
        self.life.became_ready(handle)
        self.owner.on_capacity()

    def boot_failed(self, handle: ChildHandle, message: str) -> None:
        self.life.count_boot_failure(message, self.metrics)
        self.kill(handle, KillReason.BOOT_FAILED, message)

