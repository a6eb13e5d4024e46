"""Process-tree memory and killing, and the container's memory from cgroup v2.

Memory is PSS (proportional set size): Chromium's processes share most of their
pages, so summing RSS counts the shared pages once per process (measured here:
an idle browser is 244 MB PSS but 540 MB summed RSS). PSS splits each shared
page between its users, so a tree's PSS is what killing it would free.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss_bytes(procs: list[psutil.Process]) -> int:
    """Summed RSS: cheap (/proc/PID/statm) and never below the tree's PSS."""
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def tree_pss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.uss)
    return total


def kill_tree(pid: int, procs: list[psutil.Process] | None = None) -> list[psutil.Process]:
    """SIGKILL the child's process group and every descendant seen. Never waits, never reaps.

    Descendants are listed before the kill: once the child dies its Chromium
    would be re-parented and no longer findable through it.

    No waiting: this runs on the watchdog thread and on the event loop, and a
    wait for a dozen SIGKILLed processes took 1-3 s (the re-parented ones are
    reaped by init, not by us), stalling every other deadline. No reaping: the
    direct child is reaped by multiprocessing (``process.join``), which keeps its
    exit code; a ``waitpid`` here stole it and left ``is_alive()`` true forever.
    """
    procs = procs if procs is not None else tree(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the child made itself a group leader
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    return procs


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
