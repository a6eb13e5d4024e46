"""The bench's simulated container (bench/container.py) on real processes: a process's
growth shows on the next tick, before its PSS is read again, and counts against high water."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.container import SimulatedContainer
from supervisor.pool.memory import pss_bytes, walk

pytestmark = pytest.mark.timeout(300)

MIB = 2**20
GROWER = r"""
import sys
held = []
for line in sys.stdin:
    held.append(b"\x01" * (int(line) * 2**20))  # written, so resident
    print("grown", flush=True)
"""


@pytest.fixture
def grower() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield proc
    proc.kill()
    proc.wait()


def grow(proc: subprocess.Popen[str], mib: int) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{mib}\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "grown"


def test_growth_shows_on_the_next_tick_and_counts_over_high_water(grower: subprocess.Popen[str]) -> None:
    exact = pss_bytes(walk(os.getpid()).pids)
    reader = SimulatedContainer(limit_bytes=exact + 170 * MIB, high_water_ratio=0.85)
    first = reader()
    assert abs(first.used_bytes - exact) < 30 * MIB, "the first tick reads every process's PSS"
    assert reader.ticks_over_high_water == 0
    grow(grower, 150)
    second = reader()  # within PSS_MIN_AGE_SECONDS: no PSS read, the RSS gained is added
    assert second.used_bytes - first.used_bytes > 140 * MIB
    assert second.ratio >= 0.85
    assert reader.ticks == 2 and reader.ticks_over_high_water == 1
    assert reader.peak_bytes == second.used_bytes
    assert reader.restart_counts()["ticks_over_high_water"] == 1
    assert reader.ticks == reader.ticks_over_high_water == 0
