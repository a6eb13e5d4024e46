"""Pause points for tests that must stop a real worker at an exact moment.

Inactive unless EXPORT_WORKER_TEST_GATE_DIR is set (only tests set it). A test
arms a point for one worker process by creating ``{dir}/arm-{point}-{pid}``; the
first job to reach that point takes the arm, writes ``{dir}/paused-{point}-{pid}``
(holding the job id), and blocks until ``{dir}/go-{point}-{pid}`` exists. The test
then freezes the process for real (SIGSTOP) knowing where it stands.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

GATE_ENV = "EXPORT_WORKER_TEST_GATE_DIR"
MAX_PAUSE_SECONDS = 300.0


def pause_point(point: str, job_id: str) -> None:
    """Block here if a test armed `point` for this process (called from a worker thread)."""
    gate = os.environ.get(GATE_ENV)
    if not gate:
        return
    folder, pid = Path(gate), os.getpid()
    try:
        (folder / f"arm-{point}-{pid}").rename(folder / f"armed-{point}-{pid}")
    except FileNotFoundError:
        return  # not armed, or another job took it
    (folder / f"paused-{point}-{pid}").write_text(job_id)
    deadline = time.monotonic() + MAX_PAUSE_SECONDS
    go = folder / f"go-{point}-{pid}"
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
