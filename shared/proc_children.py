"""The kernel's per-thread lists of child processes (``/proc/PID/task/TID/children``):
how both the supervisor's watchdog and a render child find processes under a root
without psutil's scan of every process on the machine."""

from __future__ import annotations

import os


def children_of(pid: int, tid: int) -> list[int]:
    """The children thread `tid` of process `pid` forked ([] when either is gone).

    The path only exists while `tid` is a thread of `pid`, so a reused thread id
    elsewhere on the machine is never read as ours."""
    try:
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
            return [int(word) for word in fh.read().split()]
    except (OSError, ValueError):
        return []


def threads_of(pid: int) -> list[int]:
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return []


def process_gone(pid: int) -> bool:
    """Exited, or a zombie nobody reaped yet (its memory is freed, it does nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True
