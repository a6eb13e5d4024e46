"""One render child as the pool sees it: its handle, its states, how it is started.

Only the pool writes a handle's fields. The watchdog thread reads them and, when
it kills a tree, posts ``(child, reason, detail)`` to the pool on the event loop.
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
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import msgspec

from shared.child_env import CleanEnvProcess
from shared.messages import TO_CHILD_ENCODER, ChildOptions, Log, Rendered, RenderFailed, RenderJob, chromium_home
from shared.vocabulary import ChildDeath, KillReason, LogLevel
from supervisor.pool.memory import kill_marked

log = logging.getLogger(__name__)

ChildTarget = Callable[[multiprocessing.connection.Connection, bytes], None]
PAGE_KILL_GRACE_SECONDS = 10.0  # after its page's renderer was killed, the time a job has to be answered


class ChildState(enum.Enum):
    BOOTING = "booting"  # launching Chromium
    CANARY = "canary"  # rendering its canary
    IDLE = "idle"  # ready, no job
    BUSY = "busy"  # ready, one job or more (up to its slots)
    STOPPING = "stopping"  # told to Stop; waiting for it to exit
    DEAD = "dead"


@dataclass
class Assignment:
    """A job in a child. `deadline` is monotonic; the watchdog kills past it.

    ``kill_reason`` is set when the job's own page was stopped (its renderer killed for
    memory, time, a cancel or a lost claim): however the child then answers, the job
    settles as lost for that reason; if no answer comes by ``kill_deadline`` the child goes.
    """

    job: RenderJob
    context: Any  # the owner's claim
    started: float
    deadline: float
    renderer_pid: int = 0  # the renderer process drawing its page, when the child could tell
    kill_reason: KillReason | None = None
    kill_detail: str = ""
    kill_deadline: float = float("inf")


@dataclass(frozen=True)
class ChildLost:
    """The child holding a job was killed or died: why, and what the kill saw.

    ``spared``: the child died for another job's sake (that job's page could not be
    stopped alone); this job goes back to pending without spending an attempt."""

    reason: KillReason
    detail: str = ""
    exitcode: int | None = None
    spared: bool = False


@dataclass(eq=False)
class ChildHandle:
    index: int
    generation: int
    process: BaseProcess
    conn: multiprocessing.connection.Connection
    boot_deadline: float
    render_budget: int
    retire_at: float
    spawned_at: float
    state: ChildState = ChildState.BOOTING
    pid: int = 0
    renders: int = 0
    assignments: dict[str, Assignment] = field(default_factory=dict)  # by job id
    slots: int = 1  # jobs at once, as its Ready said
    browser_pid: int = 0  # its Chromium browser process, as its Ready said
    canary_path: str = ""
    kill_reason: KillReason | None = None  # set once, by the pool
    kill_detail: str = ""
    culprit: str | None = None  # the job whose page the kill was for; None: every job's
    retire_requested: bool = False
    replacement_for: ChildHandle | None = None
    memory_bytes: int = 0  # tree PSS, refreshed by the watchdog (its only write)
    pss_measured_at: float = float("-inf")  # the watchdog's bookkeeping:
    rss_at_pss: dict[int, int] = field(default_factory=dict)  # each process's RSS when PSS was read
    pipe_open: bool = True
    stop_sent_at: float = 0.0
    browser_version: str = ""

    @property
    def name(self) -> str:
        return f"child-{self.index}.{self.generation}"

    @property
    def due_for_recycle(self) -> bool:
        return self.renders >= self.render_budget or time.monotonic() >= self.retire_at

    @property
    def free_slots(self) -> int:
        """Jobs it can take now: none while it boots, stops, retires or is being killed."""
        if self.state not in (ChildState.IDLE, ChildState.BUSY) or self.retire_requested or self.kill_reason:
            return 0
        return max(0, self.slots - len(self.assignments))


@dataclass
class PoolConfig:
    size: int  # children
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
    slots: int = 1  # jobs per child (SLOTS_PER_CHILD)
    capacity: int = 0  # jobs in flight in all (MAX_CONCURRENT_RENDERS); 0: size x slots

    @property
    def total(self) -> int:
        return self.capacity or self.size * self.slots


class PoolOwner(Protocol):
    """What the supervisor does with answers and deaths."""

    def on_rendered(self, handle: ChildHandle, assignment: Assignment, result: Rendered) -> None: ...

    def on_render_failed(self, handle: ChildHandle, assignment: Assignment, result: RenderFailed) -> None: ...

    def on_child_lost(self, handle: ChildHandle, assignment: Assignment, lost: ChildLost) -> None: ...

    def on_capacity(self) -> None: ...


def spawn_child(
    ctx: SpawnContext, config: PoolConfig, index: int, generation: int, replacement_for: ChildHandle | None
) -> ChildHandle:
    options = msgspec.structs.replace(config.options, child_index=index)
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    # Exec'd with the allowlisted environment only: no secret reaches a child (shared/child_env.py).
    process = CleanEnvProcess(
        target=config.target,
        args=(child_conn, msgspec.msgpack.encode(options)),
        name=f"render-child-{options.child_index}",
        daemon=True,
    )
    process.start()
    child_conn.close()
    now = time.monotonic()
    # Jitter so children started together do not all retire together.
    age = config.child_max_age_seconds * (1 + random.uniform(0, 0.1))
    budget = max(1, int(config.renders_per_child * (1 + random.uniform(0, 0.1))))
    return ChildHandle(
        index=options.child_index,
        generation=generation,
        process=process,
        conn=parent_conn,
        spawned_at=now,
        boot_deadline=now + config.boot_timeout_seconds,
        render_budget=budget,
        retire_at=now + age,
        pid=process.pid or 0,
        replacement_for=replacement_for,
    )


class BootBrake:
    """The restart-storm brake (billiard's): too many boot failures in a window stop spawning."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._failures: deque[float] = deque()
        self._braked_until = 0.0
        self.last_error = ""

    @property
    def engaged(self) -> bool:
        return time.monotonic() < self._braked_until

    def failed(self, error: str) -> None:
        """Count a boot failure (and engage the brake when there were too many)."""
        if error:
            self.last_error = error
        now = time.monotonic()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self.window_seconds:
            self._failures.popleft()
        if len(self._failures) >= self.limit and not self.engaged:
            self._braked_until = now + self.window_seconds
            log.error("render children keep failing to start; not claiming until one boots",
                      extra={"boot_failures": len(self._failures), "error": error})
        else:
            log.warning("render child failed to start", extra={"error": error})

    def booted(self) -> None:
        self._failures.clear()
        self._braked_until = 0.0


def close_pipe(handle: ChildHandle, loop: asyncio.AbstractEventLoop | None) -> None:
    if handle.pipe_open:
        handle.pipe_open = False
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(handle.conn.fileno())
        with contextlib.suppress(OSError):
            handle.conn.close()


def remove_chromium_home(handle: ChildHandle, scratch_dir: str) -> None:
    """What re-parented itself out of the tree (Chromium's crash handler) is found by
    the child's own Chromium home, and goes too; then the home itself."""
    if handle.pid:
        home = chromium_home(scratch_dir, handle.pid)
        kill_marked(home)
        shutil.rmtree(home, ignore_errors=True)


_DEATH_OF_KILL = {
    KillReason.MEMORY: ChildDeath.MEMORY,
    KillReason.CONTAINER_MEMORY: ChildDeath.MEMORY,
    KillReason.TIMEOUT: ChildDeath.DEADLINE,
    KillReason.RECYCLE: ChildDeath.RECYCLED,
    KillReason.BOOT_FAILED: ChildDeath.BOOT_FAILURE,
    KillReason.CRASHED: ChildDeath.CRASHED,
    KillReason.CANCELLED: ChildDeath.STOPPED,
    KillReason.CLAIM_LOST: ChildDeath.STOPPED,
    KillReason.SHUTDOWN: ChildDeath.STOPPED,
    KillReason.UNRESPONSIVE: ChildDeath.STOPPED,
}
_UNEXPECTED_DEATHS = frozenset({ChildDeath.CRASHED, ChildDeath.MEMORY, ChildDeath.DEADLINE, ChildDeath.BOOT_FAILURE})


def death_reason(handle: ChildHandle, was: ChildState, pool_stopping: bool) -> ChildDeath:
    """Why a child that just ended ended: the pool's kill reason, else what it was doing."""
    if handle.kill_reason is not None:
        return _DEATH_OF_KILL[handle.kill_reason]
    if was in (ChildState.BOOTING, ChildState.CANARY):
        return ChildDeath.BOOT_FAILURE
    if handle.retire_requested:  # it was told to Stop and exited
        return ChildDeath.STOPPED if pool_stopping else ChildDeath.RECYCLED
    return ChildDeath.CRASHED  # exited or was killed from outside with nobody asking


def log_death(handle: ChildHandle, reason: ChildDeath, exitcode: int | None) -> None:
    """One line per child death, with how the process ended: its exit status or the signal that killed it."""
    fields: dict[str, Any] = {"child": handle.name, "pid": handle.pid, "reason": reason,
                              "renders": handle.renders, "kill_detail": handle.kill_detail or None}
    if exitcode is not None and exitcode < 0:
        fields["signal"] = signal.Signals(-exitcode).name
    else:
        fields["exit_code"] = exitcode
    level = logging.WARNING if reason in _UNEXPECTED_DEATHS else logging.INFO
    log.log(level, "render child ended", extra=fields)


def export_states(handles: list[ChildHandle], metrics: Any) -> None:
    for state in ChildState:
        metrics.children.labels(state.value).set(sum(1 for h in handles if h.state is state))


def describe_pool(handles: list[ChildHandle], brake: BootBrake) -> tuple[bool, str]:
    """(able to render, message) for /health."""
    idle = sum(1 for h in handles if h.state is ChildState.IDLE and not h.retire_requested)
    busy = sum(1 for h in handles if h.state is ChildState.BUSY)
    booting = sum(1 for h in handles if h.state in (ChildState.BOOTING, ChildState.CANARY))
    if brake.engaged:
        return False, f"render children keep failing to start: {brake.last_error or 'see logs'}"
    if idle + busy == 0:
        return False, f"no render child ready ({booting} starting)"
    jobs = sum(len(h.assignments) for h in handles)
    return True, f"Render pool OK: {idle} idle, {busy} busy ({jobs} jobs), {booting} starting"


def send_canary(handle: ChildHandle, scratch_dir: str) -> bool:
    """Send the child its canary render; False when its pipe is already gone."""
    from render_child.canary import canary_job

    handle.state = ChildState.CANARY
    handle.canary_path = os.path.join(scratch_dir, f"canary-{handle.name}.pdf")
    try:
        handle.conn.send_bytes(TO_CHILD_ENCODER.encode(canary_job(handle.canary_path)))
    except OSError:
        return False
    return True


async def wait_exited(handles: list[ChildHandle], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(h.process.is_alive() for h in handles) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def relay_log(handle: ChildHandle, message: Log) -> None:
    """Write a child's log line through the supervisor's logging, at its own level."""
    try:
        level = LogLevel(message.level).number
    except ValueError:
        level = logging.INFO
    log.log(level, message.message, extra={"job_id": message.job_id, "child": handle.name})
