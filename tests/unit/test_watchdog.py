"""The watchdog reads PSS (expensive) only when the cheap summed RSS says it could matter."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from shared.messages import FROM_CHILD_DECODER, FROM_CHILD_ENCODER, Log
from supervisor.pool import watchdog as watchdog_module
from supervisor.pool.children import ChildState, relay_log
from supervisor.pool.memory import ContainerMemory
from supervisor.pool.watchdog import Watchdog

pytestmark = pytest.mark.timeout(300)


def make_watchdog(pid: int, limit_bytes: int) -> tuple[Watchdog, Any]:
    handle = SimpleNamespace(
        state=ChildState.IDLE, kill_reason=None, pid=pid, assignments={}, browser_pid=0,
        memory_bytes=0, pss_measured_at=float("-inf"), rss_at_pss={}, index=0,
    )
    pool = SimpleNamespace(handles=[handle], config=SimpleNamespace(slots=1), set_verdicts=lambda child, page: None)
    dog = Watchdog(
        pool,  # type: ignore[arg-type]
        asyncio.new_event_loop(),
        interval_seconds=0.2,
        child_limit_bytes=limit_bytes,
        high_water_ratio=0.85,
        critical_ratio=0.95,
        read_container=lambda: ContainerMemory(1, 100, "test"),
    )
    return dog, handle


@pytest.fixture
def child_pid() -> Any:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def count_pss_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = watchdog_module.pss_bytes

    def counting(pids: Any) -> int:
        calls.append(1)
        return real(pids)

    monkeypatch.setattr(watchdog_module, "pss_bytes", counting)
    return calls


def test_far_under_the_limit_pss_is_read_once_then_only_refreshed(
    monkeypatch: pytest.MonkeyPatch, child_pid: int
) -> None:
    calls = count_pss_reads(monkeypatch)
    dog, handle = make_watchdog(child_pid, limit_bytes=10 * 2**30)
    for _ in range(5):
        dog.tick()
    assert len(calls) == 1, "PSS is read once for the gauge, then skipped while RSS is far under the limit"
    assert handle.memory_bytes > 0


def test_an_idle_childs_pss_is_refreshed_less_often_than_a_busy_ones(
    monkeypatch: pytest.MonkeyPatch, child_pid: int
) -> None:
    calls = count_pss_reads(monkeypatch)
    dog, handle = make_watchdog(child_pid, limit_bytes=10 * 2**30)
    now = 1_000.0
    between = (watchdog_module.PSS_REFRESH_SECONDS + watchdog_module.PSS_IDLE_REFRESH_SECONDS) / 2
    handle.pss_measured_at = now - between
    dog._measure(handle, [child_pid], now)
    assert calls == [], "an idle child's PSS is not due yet"
    handle.assignments = {"job-1": object()}
    dog._measure(handle, [child_pid], now)
    assert len(calls) == 1, "the same age is due for a child with a job"
    handle.assignments = {}
    dog._measure(handle, [child_pid], now + watchdog_module.PSS_IDLE_REFRESH_SECONDS)
    assert len(calls) == 2, "an idle child's PSS is still refreshed, less often"


def test_a_tree_whose_summed_rss_passes_the_limit_is_read_only_when_its_pss_could(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy Chromium tree counts its shared pages once per process in summed RSS, well past
    the limit; PSS is re-read only when the last PSS plus the growth since could reach it."""
    mib = 2**20
    rss = {1: 400 * mib, 2: 400 * mib, 3: 400 * mib}  # 1,200 MiB summed
    pss = [500 * mib]
    calls = count_pss_reads(monkeypatch)
    monkeypatch.setattr(watchdog_module, "rss_by_pid", lambda pids: dict(rss))
    monkeypatch.setattr(watchdog_module, "pss_bytes", lambda pids: calls.append(1) or pss[0])
    dog, handle = make_watchdog(1, limit_bytes=1024 * mib)  # slack: a quarter, 256 MiB
    handle.assignments = {"job-1": object()}
    now = 1_000.0
    assert dog._measure(handle, [1, 2, 3], now) == 500 * mib and len(calls) == 1  # nothing known yet: read
    for tick in range(1, 5):  # 500 + 0 + 256 < 1,024: under the limit whatever summed RSS says
        dog._measure(handle, [1, 2, 3], now + tick * 0.2)
    assert len(calls) == 1
    rss[4] = 200 * mib  # a new renderer, counted whole: 500 + 200 + 256 < 1,024
    rss[2] = 300 * mib  # a process that shrank gives nothing back to the bound
    dog._measure(handle, [1, 2, 3, 4], now + 1.0)
    assert len(calls) == 1
    rss[1] = 500 * mib  # 100 more: 500 + 300 + 256 > 1,024, so PSS could be over: read
    dog._measure(handle, [1, 2, 3, 4], now + 1.2)
    assert len(calls) == 2


def test_rss_growth_counts_new_processes_whole_and_ignores_the_gone_and_the_shrunk() -> None:
    from supervisor.pool.memory import rss_growth

    assert rss_growth({1: 10, 2: 5, 4: 7}, {1: 8, 2: 9, 3: 100}) == 2 + 0 + 7


def test_near_the_limit_pss_is_read_every_tick(monkeypatch: pytest.MonkeyPatch, child_pid: int) -> None:
    calls = count_pss_reads(monkeypatch)
    # A limit of 1 byte: summed RSS is over it, so every tick must measure PSS (and kill).
    dog, _ = make_watchdog(child_pid, limit_bytes=1)
    killed: list[str] = []
    monkeypatch.setattr(dog, "_kill", lambda h, reason, detail: killed.append(reason))
    for _ in range(3):
        dog.tick()
    assert len(calls) == 3
    assert killed == ["memory"] * 3


@pytest.mark.parametrize(("level", "expected"), [("warning", logging.WARNING), ("warn", logging.WARNING),
                                                 ("error", logging.ERROR), ("debug", logging.DEBUG),
                                                 ("info", logging.INFO), ("nonsense", logging.INFO)])
def test_a_childs_log_line_keeps_its_level(level: str, expected: int, caplog: pytest.LogCaptureFixture) -> None:
    """The child says "warning" (Python's name); it must come out as a WARNING, not INFO."""
    message = FROM_CHILD_DECODER.decode(FROM_CHILD_ENCODER.encode(Log(level=level, message="disk low", job_id="j1")))
    assert isinstance(message, Log)
    with caplog.at_level(logging.DEBUG, logger="supervisor.pool.children"):
        relay_log(SimpleNamespace(name="child-0.1"), message)  # type: ignore[arg-type]
    (record,) = [r for r in caplog.records if r.getMessage() == "disk low"]
    assert record.levelno == expected
    assert record.job_id == "j1"  # type: ignore[attr-defined]
