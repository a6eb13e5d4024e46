"""The children's lifecycle inside the pool: spawning, readiness, recycling, stopping.

One part of :class:`~supervisor.pool.render_pool.RenderPool` (which owns it and is the
only caller): it writes a handle's state from boot to the Stop it is sent, and keeps
the restart-storm brake and the generations.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.messages import TO_CHILD_ENCODER, Stop
from shared.vocabulary import RecycleReason
from supervisor.pool.children import BootBrake, ChildHandle, ChildState, PoolConfig, spawn_child
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    kills: dict[str, int] = field(default_factory=dict)
    recycles: dict[str, int] = field(default_factory=dict)
    deaths: dict[str, int] = field(default_factory=dict)
    boot_failures: int = 0


class Lifecycle:
    def __init__(self, config: PoolConfig, handles: list[ChildHandle], stats: PoolStats,
                 count: Callable[[dict[str, int], str, str], None], watch: Callable[[ChildHandle], None]) -> None:
        self.config = config
        self.watch = watch  # the pool reads the new child's pipe
        self.handles = handles
        self.stats = stats
        self.count = count
        self.brake = BootBrake(config.storm_limit, config.storm_window_seconds)
        self.stopping = False
        self.last_able_at: float | None = None  # when a child last could render (idle or busy)
        self._ctx = multiprocessing.get_context("spawn")
        self._generations: dict[int, int] = {}

    def spawn(self, index: int, replacement_for: ChildHandle | None = None) -> ChildHandle:
        generation = self._generations.get(index, 0) + 1
        self._generations[index] = generation
        handle = spawn_child(self._ctx, self.config, index, generation, replacement_for)
        self.handles.append(handle)
        self.watch(handle)
        log.debug("spawned render child", extra={"child": handle.name, "pid": handle.pid})
        return handle

    def became_ready(self, handle: ChildHandle) -> None:
        handle.state = ChildState.IDLE
        self.last_able_at = time.monotonic()
        self.brake.booted()
        old = handle.replacement_for
        if old is not None:
            handle.replacement_for = None
            self.retire(old)

    def start_recycle(self, handle: ChildHandle, reason: RecycleReason | None = None) -> None:
        """Warm a replacement first; the old child keeps its jobs until it is ready."""
        if any(h.replacement_for is handle for h in self.handles) or self.stopping:
            return
        if reason is None:
            reason = RecycleReason.RENDERS if handle.renders >= handle.render_budget else RecycleReason.AGE
        self.count(self.stats.recycles, "child_recycles", reason)
        self.spawn(handle.index, replacement_for=handle)

    def retire(self, handle: ChildHandle) -> None:
        """No more jobs for it; Stop as soon as it holds none."""
        handle.retire_requested = True
        if handle.state in (ChildState.DEAD, ChildState.STOPPING) or handle.assignments:
            return
        handle.state = ChildState.STOPPING
        handle.stop_sent_at = time.monotonic()
        with contextlib.suppress(OSError):
            handle.conn.send_bytes(TO_CHILD_ENCODER.encode(Stop()))

    def count_boot_failure(self, message: str, metrics: Metrics | None) -> None:
        self.stats.boot_failures += 1
        if metrics is not None:
            metrics.child_boot_failures.inc()
        self.brake.failed(message)

    def top_up(self) -> None:
        """A child for every index that has none (not while stopping or braked)."""
        if self.stopping or self.brake.engaged:
            return
        present = {h.index for h in self.handles}
        for index in range(self.config.size):
            if index not in present:
                self.spawn(index)

    def due(self, handle: ChildHandle, now: float) -> bool:
        """An idle child past its age: recycled too, not only after its next render."""
        return (handle.state is ChildState.IDLE and not handle.retire_requested and now >= handle.retire_at
                and not self.stopping and not self.brake.engaged)
