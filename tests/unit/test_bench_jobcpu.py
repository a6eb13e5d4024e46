"""bench/jobcpu.py's reading of py-spy's raw samples (no processes needed)."""

from __future__ import annotations

import pytest

from bench.jobcpu import RATE, functions, per_role_ms

SUP = 'process 10:"python -m bench.jobcpu"'
CHILD = 'process 11:"python -c from multiprocessing.spawn import spawn_main; spawn_main(pipe_handle=5)"'
RAW = "\n".join([
    f"{SUP};thread (10): MainThread;run (asyncio/runners.py:118);Settler.settle (supervisor/settle.py:150);"
    "JobQueue.complete (supervisor/queue/jobs.py:40) 40",
    f"{SUP};thread (12): watchdog;Watchdog.tick (supervisor/pool/watchdog.py:99);"
    "pss_bytes (supervisor/pool/memory.py:143) 20",
    f"{SUP};thread (10): MainThread;BaseEventLoop._run_once (asyncio/base_events.py:1884);"
    "EpollSelector.select (selectors.py:468) 500",
    f"{SUP};{CHILD};thread (11): MainThread;_run (render_child/main.py:200);render_pdf (render_child/output.py:40) 10",
])


def test_samples_by_process_and_function_in_ms_per_job() -> None:
    out = functions(RAW, {10: "supervisor", 11: "python child"}, jobs=2)
    scale = 1000 / RATE / 2
    sup, child = out["supervisor"], out["python child"]
    assert sup["total_ms"] == pytest.approx(60 * scale)  # the select (a wait) is left out
    assert sup["self"][0] == ("JobQueue.complete (supervisor/queue/jobs.py)", pytest.approx(40 * scale))
    inclusive = dict(sup["inclusive"])
    assert inclusive["Settler.settle (supervisor/settle.py)"] == pytest.approx(40 * scale)
    assert "run (asyncio/runners.py)" not in inclusive  # only the project's own functions
    # the child's command line holds a ";": its stack is still the child's, and whole
    assert child["total_ms"] == pytest.approx(10 * scale)
    assert child["self"] == [("render_pdf (render_child/output.py)", pytest.approx(10 * scale))]


def test_cpu_per_role_counts_newborn_processes_from_zero() -> None:
    roles = {1: "supervisor", 2: "python child", 3: "python child"}
    ms = per_role_ms(roles, before={1: 1.0, 2: 2.0}, after={1: 1.5, 2: 2.25, 3: 0.25}, jobs=10)
    assert ms == pytest.approx({"supervisor": 50.0, "python child": 50.0})
