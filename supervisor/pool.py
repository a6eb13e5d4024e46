"""The render pool: spawned children, each owning one Chromium.

The asyncio side lives here: spawning, reading answers, reaping, recycling with
a warm replacement, the restart-storm brake. Memory and deadlines are enforced
by the watchdog thread (supervisor/watchdog.py), which kills a tree on its own
and tells this pool through ``loop.call_soon_threadsafe``; the pool then settles
the job (through the owner's callbacks) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import msgspec

from shared.child_env import CleanEnvProcess
from shared.messages import (
    EX_BOOT_FAILED,
    EX_RECYCLE,
    FROM_CHILD_DECODER,
    TO_CHILD_ENCODER,
    BootFailed,
    ChildOptions,
    FromChild,
    Log,
    Ready,
    Rendered,
    RenderFailed,
    RenderJob,
    Stop,
    chromium_home,
)
from supervisor.memory import kill_marked, kill_tree
from supervisor.sandbox import chromium_args

log = logging.getLogger(__name__)

ChildTarget = Callable[[multiprocessing.connection.Connection, bytes], None]


class ChildState(enum.Enum):
    BOOTING = "booting"  # launching Chromium
    CANARY = "canary"  # rendering its canary
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"  # told to Stop; waiting for it to exit
    DEAD = "dead"


@dataclass
class Assignment:
    """A job in a child. `deadline` is monotonic; the watchdog kills past it."""

    job: RenderJob
    context: Any  # the owner's claim
    started: float
    deadline: float


@dataclass(eq=False)
class ChildHandle:
    index: int
    generation: int
    process: BaseProcess
    conn: multiprocessing.connection.Connection
    spawned_at: float
    boot_deadline: float
    render_budget: int
    retire_at: float
    state: ChildState = ChildState.BOOTING
    pid: int = 0
    renders: int = 0
    assignment: Assignment | None = None
    canary_path: str = ""
    kill_reason: str | None = None  # set once, by whoever killed it (watchdog or pool)
    kill_detail: str = ""
    retire_requested: bool = False
    replacement_for: ChildHandle | None = None
    memory_bytes: int = 0  # tree PSS, refreshed by the watchdog
    pss_measured_at: float = float("-inf")
    pipe_open: bool = True
    ready_at: float = 0.0
    stop_sent_at: float = 0.0
    boot_ms: float = 0.0
    browser_version: str = ""

    @property
    def name(self) -> str:
        return f"child-{self.index}.{self.generation}"

    @property
    def due_for_recycle(self) -> bool:
        return self.renders >= self.render_budget or time.monotonic() >= self.retire_at


class PoolOwner(Protocol):
    """What the supervisor does with answers and deaths."""

    def on_rendered(self, handle: ChildHandle, assignment: Assignment, result: Rendered) -> None: ...

    def on_render_failed(self, handle: ChildHandle, assignment: Assignment, result: RenderFailed) -> None: ...

    def on_child_lost(self, handle: ChildHandle, assignment: Assignment, reason: str, exitcode: int | None) -> None: ...

    def on_capacity(self) -> None: ...


@dataclass
class PoolConfig:
    size: int
    options: ChildOptions
    target: ChildTarget
    job_timeout_seconds: float
    renders_per_child: int
    child_max_age_seconds: float
    boot_timeout_seconds: float
    canary: bool
    storm_limit: int
    storm_window_seconds: float
    stop_grace_seconds: float = 5.0


@dataclass
class PoolStats:
    kills: dict[str, int] = field(default_factory=dict)
    recycles: dict[str, int] = field(default_factory=dict)
    boot_failures: int = 0
    canary_failures: int = 0


class RenderPool:
    def __init__(self, config: PoolConfig, owner: PoolOwner, metrics: Any = None) -> None:
        self.config = config
        # Chromium's own sandbox where the host allows it: detected once, logged once (supervisor/sandbox.py).
        args = chromium_args(config.options.chromium_args)
        config.options = msgspec.structs.replace(config.options, chromium_args=args)
        self.owner = owner
        self.metrics = metrics
        self.handles: list[ChildHandle] = []
        self.stats = PoolStats()
        self._ctx = multiprocessing.get_context("spawn")
        self._generations: dict[int, int] = {}
        self._boot_failures: deque[float] = deque()
        self._braked_until = 0.0
        self.last_canary_ok: bool | None = None
        self.last_boot_error = ""
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        Path(config.options.scratch_dir).mkdir(parents=True, exist_ok=True)

    # ---- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for index in range(self.config.size):
            self._spawn(index)

    def _spawn(self, index: int, replacement_for: ChildHandle | None = None) -> ChildHandle:
        generation = self._generations.get(index, 0) + 1
        self._generations[index] = generation
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        options = msgspec.structs.replace(self.config.options, child_index=index)
        # Exec'd with the allowlisted environment only: no secret reaches a child (shared/child_env.py).
        process = CleanEnvProcess(
            target=self.config.target,
            args=(child_conn, msgspec.msgpack.encode(options)),
            name=f"render-child-{index}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        now = time.monotonic()
        # Jitter so children started together do not all retire together.
        age = self.config.child_max_age_seconds * (1 + random.uniform(0, 0.1))
        budget = max(1, int(self.config.renders_per_child * (1 + random.uniform(0, 0.1))))
        handle = ChildHandle(
            index=index,
            generation=generation,
            process=process,
            conn=parent_conn,
            spawned_at=now,
            boot_deadline=now + self.config.boot_timeout_seconds,
            render_budget=budget,
            retire_at=now + age,
            pid=process.pid or 0,
            replacement_for=replacement_for,
        )
        self.handles.append(handle)
        assert self._loop is not None
        self._loop.add_reader(parent_conn.fileno(), self._on_readable, handle)
        log.debug("spawned render child", extra={"child": handle.name, "pid": handle.pid})
        return handle

    async def stop(self, grace_seconds: float) -> None:
        """Ask every child to stop; kill what is still there after the grace."""
        self.stopping = True
        for handle in self.handles:
            self._send_stop(handle)
        deadline = time.monotonic() + grace_seconds
        while any(h.process.is_alive() for h in self.handles) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for handle in list(self.handles):
            if handle.process.is_alive():
                self.kill(handle, "shutdown")
            self._reap(handle)

    # ---- dispatch ------------------------------------------------------------

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
            # The child died between the tick and now; the reaper settles the job.
            self.kill(handle, "crashed")

    def kill(self, handle: ChildHandle, reason: str) -> None:
        """Kill a child's whole tree; its job (if any) is settled by the reaper."""
        if handle.kill_reason is None:
            handle.kill_reason = reason
        if handle.pid:
            kill_tree(handle.pid)
        self._count("kills", reason)

    def on_watchdog_kill(self, handle: ChildHandle, reason: str) -> None:
        """The watchdog thread killed a tree: count it and settle at once."""
        self._count("kills", reason)
        log.warning(
            "render child killed",
            extra={"child": handle.name, "reason": reason, "detail": handle.kill_detail,
                   "job_id": handle.assignment.job.job_id if handle.assignment else None},
        )
        self._reap(handle)

    # ---- reading answers -----------------------------------------------------

    def _on_readable(self, handle: ChildHandle) -> None:
        try:
            while handle.conn.poll():
                message = FROM_CHILD_DECODER.decode(handle.conn.recv_bytes())
                self._handle_message(handle, message)
        except (EOFError, OSError) as exc:
            log.debug("render child pipe closed", extra={"child": handle.name, "error": repr(exc),
                                                          "state": handle.state.value})
            self._close_pipe(handle)
            self._reap(handle)
        except msgspec.DecodeError:
            log.error("render child sent garbage; killing it", extra={"child": handle.name})
            self.kill(handle, "protocol")
            self._reap(handle)

    def _handle_message(self, handle: ChildHandle, message: FromChild) -> None:
        match message:
            case Log():
                level = {"error": logging.ERROR, "warn": logging.WARNING, "debug": logging.DEBUG}.get(
                    message.level, logging.INFO
                )
                log.log(level, message.message, extra={"job_id": message.job_id, "child": handle.name})
            case Ready():
                handle.ready_at = time.monotonic()
                handle.boot_ms = message.boot_ms
                handle.browser_version = message.browser_version
                if self.config.canary:
                    self._send_canary(handle)
                else:
                    self._became_ready(handle)
            case BootFailed():
                self.last_boot_error = message.message
                self._boot_failed(handle, message.message)
            case Rendered() | RenderFailed():
                self._on_answer(handle, message)

    def _send_canary(self, handle: ChildHandle) -> None:
        from render_child.canary import canary_job

        handle.state = ChildState.CANARY
        handle.canary_path = str(Path(self.config.options.scratch_dir) / f"canary-{handle.name}.pdf")
        try:
            handle.conn.send_bytes(TO_CHILD_ENCODER.encode(canary_job(handle.canary_path)))
        except OSError:
            self._boot_failed(handle, "child died before its canary")

    def _on_answer(self, handle: ChildHandle, message: Rendered | RenderFailed) -> None:
        if handle.state is ChildState.CANARY:
            with contextlib.suppress(OSError):
                os.unlink(handle.canary_path)
            if isinstance(message, Rendered):
                self.last_canary_ok = True
                self._became_ready(handle)
            else:
                self.last_canary_ok = False
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
        self._after_render(handle)

    def _became_ready(self, handle: ChildHandle) -> None:
        handle.state = ChildState.IDLE
        self._boot_failures.clear()
        self._braked_until = 0.0
        old = handle.replacement_for
        if old is not None:
            handle.replacement_for = None
            self._retire(old)
        self.owner.on_capacity()

    def _after_render(self, handle: ChildHandle) -> None:
        if handle.retire_requested:
            self._send_stop(handle)
        elif handle.due_for_recycle and not self.stopping:
            self._start_recycle(handle)
        self.owner.on_capacity()

    # ---- recycling and replacing ---------------------------------------------

    def _start_recycle(self, handle: ChildHandle) -> None:
        """Warm a replacement first; the old child keeps working until it is ready."""
        if any(h.replacement_for is handle for h in self.handles):
            return
        reason = "renders" if handle.renders >= handle.render_budget else "age"
        self._count("recycles", reason)
        self._spawn(handle.index, replacement_for=handle)

    def _retire(self, handle: ChildHandle) -> None:
        if handle.state is ChildState.BUSY:
            handle.retire_requested = True
        else:
            self._send_stop(handle)

    def _send_stop(self, handle: ChildHandle) -> None:
        if handle.state in (ChildState.DEAD, ChildState.STOPPING) or handle.assignment is not None:
            handle.retire_requested = True
            return
        handle.state = ChildState.STOPPING
        handle.stop_sent_at = time.monotonic()
        handle.retire_requested = True
        with contextlib.suppress(OSError):
            handle.conn.send_bytes(TO_CHILD_ENCODER.encode(Stop()))

    def _boot_failed(self, handle: ChildHandle, message: str) -> None:
        self.stats.boot_failures += 1
        if self.metrics is not None:
            self.metrics.child_boot_failures.inc()
        now = time.monotonic()
        self._boot_failures.append(now)
        while self._boot_failures and self._boot_failures[0] < now - self.config.storm_window_seconds:
            self._boot_failures.popleft()
        if len(self._boot_failures) >= self.config.storm_limit and not self.braked:
            self._braked_until = now + self.config.storm_window_seconds
            log.error(
                "render children keep failing to start; not claiming until one boots",
                extra={"boot_failures": len(self._boot_failures), "error": message},
            )
        else:
            log.warning("render child failed to start", extra={"child": handle.name, "error": message})
        handle.kill_reason = handle.kill_reason or "boot_failed"
        if handle.pid:
            kill_tree(handle.pid)
        self._reap(handle)

    @property
    def braked(self) -> bool:
        return time.monotonic() < self._braked_until

    def _close_pipe(self, handle: ChildHandle) -> None:
        if handle.pipe_open:
            handle.pipe_open = False
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(handle.conn.fileno())
            with contextlib.suppress(OSError):
                handle.conn.close()

    def _reap(self, handle: ChildHandle) -> None:
        """Settle a dead (or dying) child: its job, its slot, its replacement."""
        if handle.state is ChildState.DEAD:
            return
        if handle.process.is_alive():
            if handle.kill_reason is None and handle.pipe_open:
                return
            # Pipe closed or killed: make sure the whole tree is gone.
            kill_tree(handle.pid)
        handle.process.join(timeout=1)
        exitcode = handle.process.exitcode
        self._close_pipe(handle)
        was = handle.state
        handle.state = ChildState.DEAD
        with contextlib.suppress(ValueError):
            self.handles.remove(handle)
        if handle.pid:
            # What re-parented itself out of the tree (Chromium's crash handler)
            # is found by the child's own Chromium home, and goes too.
            home = chromium_home(self.config.options.scratch_dir, handle.pid)
            kill_marked(home)
            shutil.rmtree(home, ignore_errors=True)
        assignment, handle.assignment = handle.assignment, None
        reason = handle.kill_reason or ("recycled" if exitcode == EX_RECYCLE else "crashed")
        if assignment is not None:
            self.owner.on_child_lost(handle, assignment, reason, exitcode)
        if was in (ChildState.BOOTING, ChildState.CANARY) and handle.kill_reason is None:
            # Died while starting, without saying why.
            self._boot_failed_quietly(exitcode)
        if self.stopping:
            return
        if not any(h.index == handle.index for h in self.handles):
            self._replace(handle.index)
        self.owner.on_capacity()

    def _boot_failed_quietly(self, exitcode: int | None) -> None:
        if exitcode == EX_BOOT_FAILED:
            return  # already counted from its BootFailed message
        self.stats.boot_failures += 1
        self._boot_failures.append(time.monotonic())

    def _replace(self, index: int) -> None:
        if self.braked:
            return  # the tick retries when the brake releases
        self._spawn(index)

    # ---- the periodic tick -----------------------------------------------------

    def tick(self) -> None:
        """Called every watchdog interval on the event loop: reap, time out boots, top up."""
        now = time.monotonic()
        for handle in list(self.handles):
            if not handle.process.is_alive():
                self._reap(handle)
            elif handle.state in (ChildState.BOOTING, ChildState.CANARY) and now > handle.boot_deadline:
                self._boot_failed(handle, f"no ready signal within {self.config.boot_timeout_seconds:.0f}s")
            elif handle.kill_reason is not None:
                self._reap(handle)
            elif handle.state is ChildState.STOPPING and now > handle.stop_sent_at + self.config.stop_grace_seconds:
                self.kill(handle, "stop_timeout")
                self._reap(handle)
            elif (
                handle.state is ChildState.IDLE
                and not handle.retire_requested
                and now >= handle.retire_at
                and not self.stopping
                and not self.braked
            ):
                # An idle child ages out too, not only after its next render.
                self._start_recycle(handle)
        if not self.stopping and not self.braked:
            present = {h.index for h in self.handles}
            for index in range(self.config.size):
                if index not in present:
                    self._spawn(index)
        if self.metrics is not None:
            for state in ChildState:
                self.metrics.children.labels(state.value).set(sum(1 for h in self.handles if h.state is state))

    # ---- health --------------------------------------------------------------

    def describe(self) -> tuple[bool, str]:
        idle = len(self.idle_children())
        busy = len(self.busy_children())
        booting = sum(1 for h in self.handles if h.state in (ChildState.BOOTING, ChildState.CANARY))
        able = idle + busy
        if self.braked:
            return False, f"render children keep failing to start: {self.last_boot_error or 'see logs'}"
        if able == 0:
            return False, f"no render child ready ({booting} starting)"
        return True, f"Render pool OK: {idle} idle, {busy} busy, {booting} starting"

    def _count(self, kind: str, reason: str) -> None:
        bucket = self.stats.kills if kind == "kills" else self.stats.recycles
        bucket[reason] = bucket.get(reason, 0) + 1
        if self.metrics is not None:
            metric = self.metrics.child_kills if kind == "kills" else self.metrics.child_recycles
            metric.labels(reason).inc()
