"""Process-tree memory and killing, and the container's memory from cgroup v2.

Memory is PSS (proportional set size): Chromium's processes share most of their
pages, so summing RSS counts the shared pages once per process (measured here:
an idle browser is 244 MB PSS but 540 MB summed RSS). PSS splits each shared
page between its users, so a tree's PSS is what killing it would free.

A tree is found from its root through the kernel's own lists of each thread's
children (``/proc/PID/task/TID/children``), not by psutil's ``children()``, which
reads the ``stat`` of every process on the machine to find parents: that scan,
three children every 200 ms, was the supervisor's largest cost (py-spy, issue #18).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.proc_children import children_of, threads_of

CGROUP_ROOT = Path("/sys/fs/cgroup")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Every thread's list is read this often; between, only the threads known to fork (below).
FULL_WALK_SECONDS = 1.0
# Without CONFIG_PROC_CHILDREN the lists are missing: fall back to psutil's scan.
HAS_CHILDREN_LISTS = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


@dataclass
class Walk:
    """A tree found from its root: its PIDs, and the non-main threads seen with children."""

    pids: list[int]
    forkers: set[tuple[int, int]] = field(default_factory=set)  # (pid, tid)


def walk(root: int, forkers: set[tuple[int, int]] | None = None) -> Walk:
    """`root` and every descendant, through the kernel's per-thread children lists.

    With `forkers` None every thread of every process is read (a full walk: about
    80 threads per child tree). Otherwise only each process's main thread and the
    `forkers` of an earlier full walk: Chromium and node fork from their main thread
    (the zygotes fork renderers, gpu and utility processes; measured here), so that
    catches a new renderer on the next tick, at a few reads per process. A process
    forked by another thread is found by the next full walk (FULL_WALK_SECONDS).

    The kernel may skip an entry of a list that changes while it is read; the next
    tick reads it again.
    """
    if not HAS_CHILDREN_LISTS:
        return Walk([p.pid for p in _psutil_tree(root)])
    if not os.path.exists(f"/proc/{root}"):
        return Walk([])
    found = Walk([root])
    seen = {root}
    i = 0
    while i < len(found.pids):
        pid = found.pids[i]
        i += 1
        main_and_forkers = [pid, *(tid for owner, tid in forkers or () if owner == pid)]
        for tid in threads_of(pid) if forkers is None else main_and_forkers:
            kids = children_of(pid, tid)
            if kids and tid != pid:
                found.forkers.add((pid, tid))
            for kid in kids:
                if kid not in seen:
                    seen.add(kid)
                    found.pids.append(kid)
    return found


class WatchedTree:
    """One child's tree between watchdog ticks: a full walk every FULL_WALK_SECONDS
    learns which threads fork; the ticks between read only those and the main threads."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.forkers: set[tuple[int, int]] = set()
        self.walked_at = float("-inf")

    def members(self, now: float) -> list[int]:
        if now - self.walked_at >= FULL_WALK_SECONDS:
            found = walk(self.root)
            self.forkers, self.walked_at = found.forkers, now
            return found.pids
        return walk(self.root, self.forkers).pids


def _psutil_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (empty when it is gone)."""
    procs = []
    for member in walk(pid).pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(member))
    return procs


def rss_by_pid(pids: Iterable[int]) -> dict[int, int]:
    """Each live PID's RSS from /proc/PID/statm (cheap); the gone are left out."""
    sizes: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm", "rb") as fh:
            sizes[pid] = int(fh.read().split()[1]) * PAGE_SIZE
    return sizes


def rss_bytes(pids: Iterable[int]) -> int:
    """Summed RSS: never below the PIDs' PSS."""
    return sum(rss_by_pid(pids).values())


def rss_growth(now: dict[int, int], then: dict[int, int]) -> int:
    """What the processes of `now` grew since `then`, a process new since counted whole.

    With the tree's PSS at `then`, this bounds how far its PSS can have risen: a new page
    counts whole in RSS and at most whole in PSS; a process that left takes its share with
    it (the pages it shared are split among fewer, never more, of the tree's processes).
    """
    return sum(max(0, size - then.get(pid, 0)) for pid, size in now.items())


def pss_bytes(pids: Iterable[int]) -> int:
    """Summed PSS from /proc/PID/smaps_rollup (the kernel walks every mapping: not per tick)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    total += int(line.split()[1]) * 1024  # kB
                    break
    return total


def tree_pss_bytes(procs: Iterable[psutil.Process]) -> int:
    return pss_bytes(proc.pid for proc in procs)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL the child's process group and every descendant. Never waits, never reaps.

    Descendants are listed (a full walk) before the kill: once the child dies its
    Chromium would be re-parented and no longer findable through it.

    No waiting: this runs on the watchdog thread and on the event loop, and a
    wait for a dozen SIGKILLed processes took 1-3 s (the re-parented ones are
    reaped by init, not by us), stalling every other deadline. No reaping: the
    direct child is reaped by multiprocessing (``process.join``), which keeps its
    exit code; a ``waitpid`` here stole it and left ``is_alive()`` true forever.
    """
    pids = walk(pid).pids
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the child made itself a group leader
    for member in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
    return pids


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose command line mentions `marker` (a child's own
    directory): what re-parented itself out of the tree, like Chromium's crash handler."""
    killed = 0
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if any(marker in part for part in proc.info["cmdline"] or ()):
                proc.kill()
                killed += 1
    return killed


@dataclass(frozen=True)
class ContainerMemory:
    used_bytes: int
    limit_bytes: int
    source: str  # "cgroup v2" or "machine"

    @property
    def ratio(self) -> float:
        return self.used_bytes / self.limit_bytes if self.limit_bytes else 0.0


def container_memory(root: Path = CGROUP_ROOT) -> ContainerMemory:
    """cgroup v2 memory.current over memory.max; the machine's memory when there is no limit."""
    try:
        limit_text = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text().strip())
        if limit_text != "max":
            # Page cache the kernel can drop is not pressure.
            inactive_file = 0
            with contextlib.suppress(OSError, ValueError):
                for line in (root / "memory.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "inactive_file":
                        inactive_file = int(value)
            return ContainerMemory(max(current - inactive_file, 0), int(limit_text), "cgroup v2")
    except (OSError, ValueError):
        pass
    vm = psutil.virtual_memory()
    return ContainerMemory(vm.total - vm.available, vm.total, "machine")
