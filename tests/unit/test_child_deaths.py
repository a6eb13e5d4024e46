"""Every way a child ends maps to one death reason (export_child_deaths_total), and the log line says how it ended."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from shared.vocabulary import ChildDeath, KillReason
from supervisor.pool.children import ChildState, death_reason, log_death


def handle(kill: KillReason | None = None, retire: bool = False) -> Any:
    return SimpleNamespace(kill_reason=kill, retire_requested=retire, name="child-0.1", pid=4242, renders=3,
                           kill_detail="")


@pytest.mark.parametrize(("kill", "expected"), [
    (KillReason.MEMORY, ChildDeath.MEMORY),
    (KillReason.CONTAINER_MEMORY, ChildDeath.MEMORY),
    (KillReason.TIMEOUT, ChildDeath.DEADLINE),
    (KillReason.RECYCLE, ChildDeath.RECYCLED),
    (KillReason.BOOT_FAILED, ChildDeath.BOOT_FAILURE),
    (KillReason.CRASHED, ChildDeath.CRASHED),
    (KillReason.CANCELLED, ChildDeath.STOPPED),
    (KillReason.CLAIM_LOST, ChildDeath.STOPPED),
    (KillReason.SHUTDOWN, ChildDeath.STOPPED),
    (KillReason.UNRESPONSIVE, ChildDeath.STOPPED),
])
def test_every_kill_reason_has_a_death_reason(kill: KillReason, expected: ChildDeath) -> None:
    assert death_reason(handle(kill), ChildState.BUSY, pool_stopping=False) is expected


def test_deaths_nobody_asked_for() -> None:
    assert death_reason(handle(), ChildState.IDLE, pool_stopping=False) is ChildDeath.CRASHED
    assert death_reason(handle(), ChildState.BUSY, pool_stopping=False) is ChildDeath.CRASHED
    assert death_reason(handle(), ChildState.BOOTING, pool_stopping=False) is ChildDeath.BOOT_FAILURE
    assert death_reason(handle(), ChildState.CANARY, pool_stopping=False) is ChildDeath.BOOT_FAILURE


def test_a_child_that_exits_after_stop() -> None:
    assert death_reason(handle(retire=True), ChildState.STOPPING, pool_stopping=False) is ChildDeath.RECYCLED
    assert death_reason(handle(retire=True), ChildState.STOPPING, pool_stopping=True) is ChildDeath.STOPPED


def test_the_log_line_names_the_signal_or_the_exit_code(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="supervisor.pool.children"):
        log_death(handle(), ChildDeath.CRASHED, -9)
        log_death(handle(retire=True), ChildDeath.RECYCLED, 0)
    crashed, recycled = caplog.records
    assert crashed.levelno == logging.WARNING and crashed.signal == "SIGKILL"  # type: ignore[attr-defined]
    assert recycled.levelno == logging.INFO and recycled.exit_code == 0  # type: ignore[attr-defined]
    assert crashed.getMessage() == "render child ended"
