"""Background work cannot die silently: a failing loop is logged, counted, and restarted or fatal.

The pool tick is FATAL (without it nothing is reaped or topped up): when it raises,
the worker stops with exit code 1 so the platform restarts it. A RESTART loop comes
back after a backoff. Real supervisor, real database, null children.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from conftest import make_settings

from render_child.null_child import null_child_entry
from supervisor.runner import EXIT_LOOP_FAILED, Supervisor
from supervisor.tasks import OnFailure, TaskOwner
from supervisor.telemetry.metrics import Metrics

pytestmark = pytest.mark.timeout(300)


async def test_a_failing_tick_stops_the_worker_with_exit_code_1(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, db_url, MAX_CONCURRENT_RENDERS="1")
    sup = Supervisor(settings, db_url, child_target=null_child_entry, serve_http=False)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.started.wait(), 30)

    def broken_tick() -> None:
        raise RuntimeError("tick exploded")

    sup.parts.pool.tick = broken_tick  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        code = await asyncio.wait_for(task, 30)
    assert code == EXIT_LOOP_FAILED
    assert sup.metrics.background_failures.labels("tick")._value.get() == 1
    failure = next(r for r in caplog.records if r.getMessage() == "background task failed")
    assert failure.exc_info is not None and "tick exploded" in str(failure.exc_info[1])  # with its traceback
    # Nothing is left running: the children are gone.
    assert all(not h.process.is_alive() for h in sup.parts.pool.handles)


async def test_a_restart_loop_comes_back_after_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    fatal: list[str] = []
    owner = TaskOwner(metrics, fatal.append)
    runs: list[float] = []
    second_run = asyncio.Event()

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise ValueError("first round fails")
        second_run.set()
        await asyncio.Event().wait()

    owner.run_loop("flaky", flaky, OnFailure.RESTART)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(second_run.wait(), 5)
    assert fatal == []
    assert metrics.background_failures.labels("flaky")._value.get() == 1
    assert runs[1] - runs[0] >= 0.4  # after the backoff, not in a hot loop
    assert any(r.getMessage() == "restarting background loop" for r in caplog.records)
    await owner.shutdown()
    assert owner.pending == 0


async def test_a_failing_one_off_task_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    owner = TaskOwner(metrics, lambda why: None)

    async def boom() -> None:
        raise KeyError("lost")

    with caplog.at_level(logging.ERROR):
        owner.spawn(boom(), name="settle-job-1", kind="settle")
        owner.spawn(boom(), name="settle-job-2", kind="settle")
        for _ in range(100):
            if owner.pending == 0:
                break
            await asyncio.sleep(0.01)
    # One metric label per kind of task, not one per job (bounded label set).
    assert metrics.background_failures.labels("settle")._value.get() == 2
    assert {s.labels["task"] for m in metrics.registry.collect() if m.name == "export_background_failures"
            for s in m.samples if s.name.endswith("_total")} == {"settle"}
    failures = [r for r in caplog.records if r.getMessage() == "background task failed"]
    assert sorted(r.task for r in failures) == ["settle-job-1", "settle-job-2"]  # type: ignore[attr-defined]
    assert all(r.exc_info for r in failures)


async def test_a_task_that_will_not_end_bounds_the_stop_and_is_named(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner(Metrics(), lambda why: None)
    release = asyncio.Event()
    cancelled = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await release.wait()  # swallows the cancel, as a blocking cleanup would

    async def polite() -> None:
        await asyncio.Event().wait()

    owner.run_loop("stubborn", stubborn, OnFailure.RESTART)
    owner.run_loop("polite", polite, OnFailure.RESTART)
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(owner.shutdown(timeout=0.5), 60)  # returns although "stubborn" never ends
    assert time.monotonic() - started >= 0.4  # it did wait for its timeout first
    assert cancelled.is_set()
    warning = next(r for r in caplog.records if r.getMessage() == "shutdown: background tasks did not end in time")
    assert warning.tasks == ["stubborn"]  # type: ignore[attr-defined]
    assert owner.pending == 1
    release.set()
    await asyncio.sleep(0.05)
    assert owner.pending == 0
