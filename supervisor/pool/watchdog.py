"""The watchdog thread: memory and deadlines, on time whatever the event loop does.

It runs in its own thread so that no database, storage or mail call can delay
it (DESIGN.md section 2, invariant 3). Every tick it measures each child's whole tree (found through
the kernel's children lists, supervisor/pool/memory.py; RSS, and PSS when it could matter), kills a
tree over the per-child limit or past its job deadline, reads the container's
memory, and kills the largest child above the critical mark. It only kills, and
posts (child, reason, detail) to the pool on the event loop; the pool records the
reason and settles the job. It writes no field of a child but its memory reading.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from shared.vocabulary import KillReason
from supervisor.pool.children import ChildHandle, ChildState
from supervisor.pool.memory import ContainerMemory, WatchedTree, container_memory, kill_tree, pss_bytes, rss_bytes
from supervisor.pool.render_pool import RenderPool
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

PSS_REFRESH_SECONDS = 2.0  # how stale the per-child PSS gauge may get while far under the limit


class Watchdog:
    def __init__(
        self,
        pool: RenderPool,
        loop: asyncio.AbstractEventLoop,
        *,
        interval_seconds: float,
        child_limit_bytes: int,
        high_water_ratio: float,
        critical_ratio: float,
        read_container: Callable[[], ContainerMemory] = container_memory,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.loop = loop
        self.interval = interval_seconds
        self.child_limit_bytes = child_limit_bytes
        self.high_water_ratio = high_water_ratio
        self.critical_ratio = critical_ratio
        self.read_container = read_container
        self.metrics = metrics
        self.container: ContainerMemory | None = None
        self.over_high_water = False
        self.over_critical = False
        # Handles this thread killed, with why (id() keys; the pool reads them when it reaps,
        # since the child's exit can reach the loop before the posted report does).
        self._verdicts: dict[int, tuple[KillReason, str]] = {}
        self._trees: dict[int, WatchedTree] = {}  # by the child's PID; only this thread uses them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def verdict_for(self, handle: ChildHandle) -> tuple[KillReason, str] | None:
        """Why this thread killed `handle`, if it did."""
        return self._verdicts.get(id(handle))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:
                log.exception("watchdog tick failed")

    def tick(self) -> None:
        now = time.monotonic()
        live = {id(h) for h in self.pool.handles}
        for gone in [key for key in self._verdicts if key not in live]:
            del self._verdicts[gone]
        pids = {h.pid for h in self.pool.handles}
        for gone in [pid for pid in self._trees if pid not in pids]:
            del self._trees[gone]
        sizes: list[tuple[int, ChildHandle]] = []
        for handle in list(self.pool.handles):
            if (handle.state is ChildState.DEAD or handle.kill_reason is not None or not handle.pid
                    or id(handle) in self._verdicts):
                continue
            members = self._trees.setdefault(handle.pid, WatchedTree(handle.pid)).members(now)
            # PSS means reading every mapping of every process (smaps_rollup): measured at
            # about a third of a core for three children at 200 ms. Summed RSS is cheap and
            # never below PSS, so while it is under the limit the tree cannot be over it;
            # PSS is then only refreshed for the metrics now and then.
            if rss_bytes(members) > self.child_limit_bytes or now - handle.pss_measured_at >= PSS_REFRESH_SECONDS:
                handle.memory_bytes = pss_bytes(members)
                handle.pss_measured_at = now
            size = handle.memory_bytes
            sizes.append((size, handle))
            assignment = handle.assignment
            if size > self.child_limit_bytes:
                self._kill(handle, KillReason.MEMORY,
                           f"tree PSS {size // 2**20} MiB over the limit of {self.child_limit_bytes // 2**20} MiB")
            elif assignment is not None and now > assignment.deadline:
                self._kill(handle, KillReason.TIMEOUT, "render passed its deadline")
        container = self.read_container()
        self.container = container
        self.over_high_water = container.ratio >= self.high_water_ratio
        self.over_critical = container.ratio >= self.critical_ratio
        if self.over_critical and sizes:
            _, largest = max(sizes, key=lambda pair: pair[0])
            if largest.kill_reason is None and id(largest) not in self._verdicts:
                self._kill(largest, KillReason.CONTAINER_MEMORY,
                           f"container memory at {container.ratio:.0%} of {container.limit_bytes // 2**20} MiB")
        if self.metrics is not None:
            for size, handle in sizes:
                self.metrics.child_memory.labels(str(handle.index)).set(size)
            self.metrics.container_memory_ratio.set(container.ratio)

    def _kill(self, handle: ChildHandle, reason: KillReason, detail: str) -> None:
        self._verdicts[id(handle)] = (reason, detail)
        kill_tree(handle.pid)  # walks the whole tree afresh: whatever started since this tick goes too
        # Recording the reason and settling (retry or fail, replacement) happen on the event loop.
        self.loop.call_soon_threadsafe(self.pool.on_watchdog_kill, handle, reason, detail)
