"""The watchdog thread: memory and deadlines, on time whatever the event loop does.

It runs in its own thread so that no database, storage or mail call can delay it
(DESIGN.md section 2, invariant 3). Every tick it measures each child's whole tree
(found through the kernel's children lists, supervisor/pool/memory.py) and acts, a
page at a time where it can:

- a job's page (its renderer process, as the child named it) over its share of the
  child's limit (``CHILD_MEMORY_LIMIT_MB / SLOTS_PER_CHILD``), or past its job's
  deadline: that renderer is killed; only that job fails, counted like a kill;
- a tree over the child's limit: its largest page is killed when it holds a fair part
  of it, else the whole tree (every job's fault, as before);
- the child's own processes (browser, driver, the child) grown past half its limit:
  the child is recycled (a replacement first; its jobs finish);
- a ready child whose browser process is gone, or a stopped page whose job got no
  answer in time: the tree is killed and its jobs settled at once;
- the container over its critical mark: the largest page, or child, goes.

It only kills, and posts what it did to the pool on the event loop; the pool records
the reason and settles. It writes no field of a child but its memory reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from shared.proc_children import process_gone
from shared.vocabulary import KillReason
from supervisor.pool.children import PAGE_KILL_GRACE_SECONDS, Assignment, ChildHandle, ChildState
from supervisor.pool.memory import (
    ContainerMemory,
    WatchedTree,
    container_memory,
    kill_tree,
    pss_bytes,
    rss_by_pid,
    rss_bytes,
    rss_growth,
)
from supervisor.pool.reaper import Verdict
from supervisor.pool.render_pool import RenderPool
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

PSS_REFRESH_SECONDS = 2.0  # how stale the per-child PSS gauge may get while far under the limit
# ... and while the child has no job: an idle tree hardly changes, and one read of it costs about
# 10 ms of CPU (measured: 7 processes, 310 MiB), which was most of an idle worker's 25 ms/s.
PSS_IDLE_REFRESH_SECONDS = 30.0
# PSS can rise with no RSS growth only when a process outside the tree stops sharing pages
# with it (another child's Chromium and driver map the same binaries): this much of the
# limit is kept for that.
SHARED_SLACK_RATIO = 0.25
MiB = 2**20


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
        self.page_limit_bytes = child_limit_bytes // max(1, pool.config.slots)
        self.shared_slack = int(child_limit_bytes * SHARED_SLACK_RATIO)
        self.high_water_ratio = high_water_ratio
        self.critical_ratio = critical_ratio
        self.read_container = read_container
        self.metrics = metrics
        self.container: ContainerMemory | None = None
        self.over_high_water = False
        self.over_critical = False
        # What this thread killed, with why (id() keys; the pool reads them when a death or
        # an answer reaches the loop before the posted report does).
        self._verdicts: dict[int, Verdict] = {}
        self._pages: dict[tuple[int, str], tuple[KillReason, str, float]] = {}  # (child, job): why, when
        self._grew: set[int] = set()  # children already told to recycle for growth
        self._trees: dict[int, WatchedTree] = {}  # by the child's PID; only this thread uses them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        pool.set_verdicts(self.verdict_for, self.page_verdict_for)

    def verdict_for(self, handle: ChildHandle) -> Verdict | None:
        """Why this thread killed `handle`, if it did."""
        return self._verdicts.get(id(handle))

    def page_verdict_for(self, handle: ChildHandle, job_id: str) -> tuple[KillReason, str] | None:
        """Why this thread killed the page of `job_id` in `handle`, if it did."""
        found = self._pages.get((id(handle), job_id))
        return None if found is None else (found[0], found[1])

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
        self._forget_the_gone()
        sizes: list[tuple[int, ChildHandle]] = []
        for handle in list(self.pool.handles):
            if (handle.state is ChildState.DEAD or handle.kill_reason is not None or not handle.pid
                    or id(handle) in self._verdicts):
                continue
            members = self._trees.setdefault(handle.pid, WatchedTree(handle.pid)).members(now)
            sizes.append((self._measure(handle, members, now), handle))
            self._check_child(handle, set(members), now)
        self._check_container(sizes)
        if self.metrics is not None:
            for size, handle in sizes:
                self.metrics.child_memory.labels(str(handle.index)).set(size)

    def _forget_the_gone(self) -> None:
        live = {id(h) for h in self.pool.handles}
        for gone in [key for key in self._verdicts if key not in live]:
            del self._verdicts[gone]
        for page in [key for key in self._pages if key[0] not in live]:
            del self._pages[page]
        self._grew &= live
        pids = {h.pid for h in self.pool.handles}
        for pid in [pid for pid in self._trees if pid not in pids]:
            del self._trees[pid]

    def _measure(self, handle: ChildHandle, members: list[int], now: float) -> int:
        # PSS means reading every mapping of every process (smaps_rollup): about 10 ms of
        # CPU per tree. RSS is cheap, and two bounds of the tree's PSS come from it: summed
        # RSS, and the last PSS plus what RSS grew since (memory.rss_growth) plus a slack
        # for sharing with other trees. A Chromium tree's summed RSS counts its shared pages
        # once per process and passes the limit in busy medium renders; the second bound
        # does not. While either is under the limit the tree cannot be over it, and PSS is
        # only refreshed now and then.
        rss = rss_by_pid(members)
        bound = min(sum(rss.values()), handle.memory_bytes + rss_growth(rss, handle.rss_at_pss) + self.shared_slack)
        refresh = PSS_REFRESH_SECONDS if handle.assignments else PSS_IDLE_REFRESH_SECONDS
        if bound > self.child_limit_bytes or now - handle.pss_measured_at >= refresh:
            handle.memory_bytes = pss_bytes(members)
            handle.rss_at_pss = rss
            handle.pss_measured_at = now
        return handle.memory_bytes

    def _check_child(self, handle: ChildHandle, members: set[int], now: float) -> None:
        jobs = list(handle.assignments.items())
        ready = handle.state in (ChildState.IDLE, ChildState.BUSY)
        if ready and handle.browser_pid and process_gone(handle.browser_pid):
            self._kill(handle, KillReason.CRASHED, "its browser process is gone")
            return
        pages: dict[str, int] = {}  # job id -> its renderer's PSS, for pages that are still running
        for job_id, assignment in jobs:
            if self._stopped(handle, job_id, assignment, now):
                return
            if (id(handle), job_id) in self._pages or assignment.kill_reason is not None:
                continue
            if now > assignment.deadline:
                self._stop_page(handle, job_id, assignment, members, KillReason.TIMEOUT, "render passed its deadline")
            elif assignment.renderer_pid in members:
                pages[job_id] = self._check_page(handle, job_id, assignment, members)
        self._check_tree(handle, pages, members)

    def _stopped(self, handle: ChildHandle, job_id: str, assignment: Assignment, now: float) -> bool:
        """A stopped page (by this thread, or by the pool: a cancel, a lost claim) whose job
        got no answer in time: the child goes, for that job's sake."""
        stopped = self._pages.get((id(handle), job_id))
        if stopped is not None:
            reason, detail, deadline = stopped[0], stopped[1], stopped[2] + PAGE_KILL_GRACE_SECONDS
        elif assignment.kill_reason is not None:
            reason, detail, deadline = assignment.kill_reason, assignment.kill_detail, assignment.kill_deadline
        else:
            return False
        if now < deadline:
            return False
        self._kill(handle, reason, f"{detail}; the child did not answer after its page was stopped", job_id)
        return True

    def _check_page(self, handle: ChildHandle, job_id: str, assignment: Assignment, members: set[int]) -> int:
        pid = assignment.renderer_pid
        rss = rss_bytes([pid])
        if rss <= self.page_limit_bytes:
            return rss  # never below PSS: under its share, not worth a PSS read (and a fair size for the tree check)
        size = pss_bytes([pid])
        if size > self.page_limit_bytes:
            self._stop_page(handle, job_id, assignment, members, KillReason.MEMORY,
                            f"page PSS {size // MiB} MiB over its share of {self.page_limit_bytes // MiB} MiB")
        return size

    def _check_tree(self, handle: ChildHandle, pages: dict[str, int], members: set[int]) -> None:
        size = handle.memory_bytes
        if size > self.child_limit_bytes:
            largest = max(pages, key=lambda job: pages[job], default=None)
            detail = f"tree PSS {size // MiB} MiB over the limit of {self.child_limit_bytes // MiB} MiB"
            if largest is not None and pages[largest] * 2 >= self.page_limit_bytes:
                self._stop_page(handle, largest, handle.assignments[largest], members, KillReason.MEMORY, detail)
            else:
                self._kill(handle, KillReason.MEMORY, detail)
        elif size - sum(pages.values()) > self.child_limit_bytes // 2 and id(handle) not in self._grew:
            self._grew.add(id(handle))
            detail = f"tree PSS {size // MiB} MiB, pages {sum(pages.values()) // MiB} MiB"
            self.loop.call_soon_threadsafe(self.pool.on_child_grew, handle, detail)

    def _check_container(self, sizes: list[tuple[int, ChildHandle]]) -> None:
        container = self.read_container()
        self.container = container
        self.over_high_water = container.ratio >= self.high_water_ratio
        self.over_critical = container.ratio >= self.critical_ratio
        if self.metrics is not None:
            self.metrics.container_memory_ratio.set(container.ratio)
        if not self.over_critical or not sizes:
            return
        _, largest = max(sizes, key=lambda pair: pair[0])
        if largest.kill_reason is not None or id(largest) in self._verdicts:
            return
        detail = f"container memory at {container.ratio:.0%} of {container.limit_bytes // MiB} MiB"
        pages = [(job_id, a) for job_id, a in largest.assignments.items()
                 if a.renderer_pid and (id(largest), job_id) not in self._pages]
        if pages:
            job_id, assignment = max(pages, key=lambda page: rss_bytes([page[1].renderer_pid]))
            members = set(self._trees[largest.pid].members(time.monotonic()))
            self._stop_page(largest, job_id, assignment, members, KillReason.CONTAINER_MEMORY, detail)
        else:
            self._kill(largest, KillReason.CONTAINER_MEMORY, detail)

    def _stop_page(self, handle: ChildHandle, job_id: str, assignment: Assignment, members: set[int],
                   reason: KillReason, detail: str) -> None:
        """Kill one job's renderer; without one the child holds, kill the child for that job."""
        pid = assignment.renderer_pid
        if not pid or pid not in members:
            self._kill(handle, reason, detail, job_id)
            return
        self._pages[(id(handle), job_id)] = (reason, detail, time.monotonic())
        self.loop.call_soon_threadsafe(self.pool.on_page_killed, handle, job_id, reason, detail)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)

    def _kill(self, handle: ChildHandle, reason: KillReason, detail: str, culprit: str | None = None) -> None:
        self._verdicts[id(handle)] = (reason, detail, culprit)
        kill_tree(handle.pid)  # walks the whole tree afresh: whatever started since this tick goes too
        # Recording the reason and settling (retry, fail or spare; replacement) happen on the event loop.
        self.loop.call_soon_threadsafe(self.pool.on_watchdog_kill, handle, reason, detail, culprit)
