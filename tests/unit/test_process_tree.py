"""The watchdog's tree walk (supervisor/pool/memory.py) on a real process tree.

The tree, like a render child's: a root that forks from its main thread (as node
and Chromium's zygotes do) and from a second thread (as a browser without zygote
would), grandchildren, and one member in its own session (out of the root's
process group, so only the walk can find it for kill_tree). It starts more
processes on request, after the first walk, as Chromium starts a new renderer.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from supervisor.pool import memory
from supervisor.pool.memory import FULL_WALK_SECONDS, WatchedTree, kill_tree, pss_bytes, rss_bytes, tree, walk

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not memory.HAS_CHILDREN_LISTS, reason="kernel without /proc/PID/task/TID/children"),
]

ROOT_SCRIPT = r"""
import os, queue, subprocess, sys, threading
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
PARENT = [sys.executable, "-c",
          "import subprocess, sys, time; p = subprocess.Popen(%r); print(p.pid, flush=True); time.sleep(60)"
          % (SLEEPER,)]
kept = []

def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    kept.append(p)
    return p

jobs, done = queue.Queue(), queue.Queue()

def forker():  # one long-lived thread, like a browser's process launcher
    while True:
        done.put(spawn(SLEEPER, start_new_session=True).pid)
        jobs.get()

threading.Thread(target=forker, daemon=True).start()
parent = spawn(PARENT, stdout=subprocess.PIPE)
grandchild = int(parent.stdout.readline())
print(parent.pid, grandchild, done.get(), flush=True)
for line in sys.stdin:
    if line.strip() == "main":
        print(spawn(SLEEPER).pid, flush=True)
    else:
        jobs.put(None)
        print(done.get(), flush=True)
"""


class Tree:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ROOT_SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)  # a group leader, as a render child makes itself
        self.root = self.proc.pid
        parent, grandchild, threaded = self.read_pids()
        self.members = {self.root, parent, grandchild, threaded}
        self.threaded = threaded

    def read_pids(self) -> list[int]:
        assert self.proc.stdout is not None
        return [int(word) for word in self.proc.stdout.readline().split()]

    def start(self, where: str) -> int:
        """A new process, forked by the root's main thread or by its second thread."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(where + "\n")
        self.proc.stdin.flush()
        (pid,) = self.read_pids()
        self.members.add(pid)
        return pid


@pytest.fixture
def process_tree() -> Iterator[Tree]:
    made = Tree()
    yield made
    for pid in made.members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    made.proc.wait()


def alive(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def test_a_full_walk_finds_every_member_as_psutil_does(process_tree: Tree) -> None:
    found = walk(process_tree.root)
    assert set(found.pids) == process_tree.members
    assert found.pids[0] == process_tree.root
    oracle = psutil.Process(process_tree.root).children(recursive=True)  # the whole-/proc scan
    assert set(found.pids) == {process_tree.root, *(p.pid for p in oracle)}
    # The second thread's child taught the walk which thread forks.
    ((owner, tid),) = found.forkers
    assert owner == process_tree.root and tid != owner
    assert {p.pid for p in tree(process_tree.root)} == process_tree.members


def test_ticks_between_full_walks_find_a_process_started_after_the_first_walk(process_tree: Tree) -> None:
    watched = WatchedTree(process_tree.root)
    now = time.monotonic()
    assert set(watched.members(now)) == process_tree.members
    # Ticks inside FULL_WALK_SECONDS read main threads and the known forker only, and still
    # see new processes from either: a new renderer appears on the next tick.
    from_main = process_tree.start("main")
    from_thread = process_tree.start("thread")
    members = watched.members(now + FULL_WALK_SECONDS / 2)
    assert {from_main, from_thread} <= set(members)
    assert set(members) == process_tree.members
    assert rss_bytes(members) > rss_bytes([process_tree.root])
    assert 0 < pss_bytes(members) <= rss_bytes(members)


def test_a_thread_never_seen_forking_is_caught_by_the_next_full_walk(process_tree: Tree) -> None:
    watched = WatchedTree(process_tree.root)
    now = time.monotonic()
    watched.members(now)
    watched.forkers.clear()  # as if the second thread had not forked before the last full walk
    late = process_tree.start("thread")
    assert late not in watched.members(now + FULL_WALK_SECONDS / 2)
    assert late in watched.members(now + FULL_WALK_SECONDS)


def test_kill_tree_kills_every_member_even_outside_the_process_group(process_tree: Tree) -> None:
    process_tree.start("main")
    process_tree.start("thread")
    assert os.getpgid(process_tree.threaded) != os.getpgid(process_tree.root)
    killed = kill_tree(process_tree.root)
    assert set(killed) == process_tree.members
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in process_tree.members) and time.monotonic() < deadline:
        time.sleep(0.02)  # SIGKILL lands at once; their parents reap them (init for the orphans)
    assert not [pid for pid in process_tree.members if alive(pid)]


def test_a_gone_root_is_an_empty_tree() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert walk(proc.pid).pids == []
    assert tree(proc.pid) == []
    assert kill_tree(proc.pid) == []
