"""The temp sweep: leftovers of workers that died without cleaning up.

Each worker process writes upload temp files under ``files/.uploads/{host}-{pid}/``
and render outputs and Chromium homes under ``scratch/{host}-{pid}/``. A worker
killed with SIGKILL leaves its folder behind. At start and on a slow tick every
worker removes the folders of processes that no longer run on this host; folders
of other hosts (a data directory shared over the network) are removed only when
nothing in them changed for a day, since their writers' liveness cannot be seen
from here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from supervisor.delivery.storage import UPLOAD_TEMP_DIR

log = logging.getLogger(__name__)

# A dead writer's folder is removed once it has been idle this long (a writer that
# just started may not have been seen by pid_exists yet on a busy machine).
LOCAL_IDLE_SECONDS = 60.0
# Folders of other hosts: no way to see the writer, so only a long silence counts.
FOREIGN_IDLE_SECONDS = 24 * 3600.0


def sweep_temp(
    data_dir: Path,
    *,
    local_idle_seconds: float = LOCAL_IDLE_SECONDS,
    foreign_idle_seconds: float = FOREIGN_IDLE_SECONDS,
    clock: Callable[[], float] = time.time,
) -> int:
    """Remove dead writers' temp folders; returns how many files were removed."""
    removed = 0
    host = socket.gethostname()
    now = clock()
    for parent in (data_dir / "files" / UPLOAD_TEMP_DIR, data_dir / "scratch"):
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            owner = _writer(entry.name)
            if owner is None:
                continue  # not a writer folder: leave it alone
            writer_host, pid = owner
            if writer_host == host:
                if pid == os.getpid() or psutil.pid_exists(pid):
                    continue
                bound = local_idle_seconds
            else:
                bound = foreign_idle_seconds
            if now - _last_change(entry) < bound:
                continue
            removed += _remove(entry)
    if removed:
        log.info("temp files of dead workers removed", extra={"files_removed": removed})
    return removed


def _writer(name: str) -> tuple[str, int] | None:
    host, sep, pid = name.rpartition("-")
    if not sep or not host or not pid.isdigit():
        return None
    return host, int(pid)


def _last_change(folder: Path) -> float:
    newest = 0.0
    with contextlib.suppress(OSError):
        newest = folder.lstat().st_mtime
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _remove(folder: Path) -> int:
    count = sum(len(files) for _, _, files in os.walk(folder))
    shutil.rmtree(folder, ignore_errors=True)
    return count
