"""A 2 GiB container: the configured pool (by default 3 children x 1 slot) through the medium and large cases.

Does the container's high-water mark (CONTAINER_HIGH_WATER_PERCENT of memory.max)
stop claims while three children render the medium and large menus?

The limit is simulated. This machine cannot give a process a real cgroup v2
``memory.max``: it runs cgroups in hybrid mode, the v2 hierarchy
(/sys/fs/cgroup/unified) offers no memory controller (``cgroup.controllers``
lists only hugetlb), and the v1 memory hierarchy belongs to the machine's own
session machinery. So the watchdog's ``read_container`` is given
:class:`SimulatedContainer`, which reports what a cgroup would hold: the memory
of this process (the supervisor) and every descendant (the children's trees),
against 2 GiB. Memory is PSS, summed over the processes (each shared page counted
once, as the cgroup charges it). Reading every process's smaps_rollup on every
200 ms tick would cost more than the rest of the supervisor, so a process's PSS
is read when it appears and when its RSS moves (PSS_* below); between two reads
it adds the RSS it gained since, so growth shows on the next tick (new private
pages count in full in both). Checked against an exact sum on every tick of a
30 medium + 10 large run (57 ticks): the estimate was within -44..+65 MiB of it
(5th to 95th percentile; median +7, extremes -81 and +256 MiB). A real cgroup also
charges page cache and kernel memory; the PDFs written here are small.

    .venv/bin/python -m bench.container [--medium 60] [--large 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.stats import load
from shared.config import Settings, load_settings
from supervisor.pool.memory import ContainerMemory, WatchedTree, pss_bytes, rss_bytes

LIMIT_BYTES = 2 * 2**30
# A process's PSS (smaps_rollup, ~1 ms for a Chromium process) is read when it appears, when its
# RSS moved by PSS_DRIFT_BYTES (at most every PSS_MIN_AGE_SECONDS), and at least every PSS_MAX_AGE_SECONDS.
PSS_DRIFT_BYTES = 16 * 2**20
PSS_MIN_AGE_SECONDS = 0.5
PSS_MAX_AGE_SECONDS = 5.0


@dataclass
class _Reading:
    pss: int
    rss: int
    at: float


class SimulatedContainer:
    """The watchdog's ``read_container``: this process's tree against `limit_bytes`.

    Called once per watchdog tick, on the watchdog thread; it also counts those
    ticks and keeps the peak (read by the bench from the loop thread once the run is over).
    """

    def __init__(self, limit_bytes: int = LIMIT_BYTES, high_water_ratio: float = 0.85) -> None:
        self.limit_bytes = limit_bytes
        self.high_water_ratio = high_water_ratio
        self.tree = WatchedTree(os.getpid())
        self.readings: dict[int, _Reading] = {}
        self.ticks = 0
        self.ticks_over_high_water = 0
        self.last_bytes = 0
        self.peak_bytes = 0
        self.peak_members = 0
        self.pss_reads = 0
        self.cost_seconds = 0.0  # this reader's own CPU time on the watchdog thread
        self.calls = 0

    @staticmethod
    def _pss_due(reading: _Reading, rss: int, now: float) -> bool:
        age = now - reading.at
        return age >= PSS_MAX_AGE_SECONDS or (age >= PSS_MIN_AGE_SECONDS and abs(rss - reading.rss) >= PSS_DRIFT_BYTES)

    def __call__(self) -> ContainerMemory:
        started = time.thread_time()  # CPU: wall time would count waits for the GIL and the cores
        now = time.monotonic()
        members = self.tree.members(now)
        used = 0
        for pid in members:
            rss = rss_bytes([pid])
            reading = self.readings.get(pid)  # None for a new process: read, never count its shared pages in full
            if reading is None or self._pss_due(reading, rss, now):
                reading = self.readings[pid] = _Reading(pss_bytes([pid]), rss, now)
                self.pss_reads += 1
            # PSS at its last read plus the RSS gained since: growth shows on this tick.
            used += max(reading.pss + rss - reading.rss, 0)
        for gone in self.readings.keys() - set(members):
            del self.readings[gone]
        self.ticks += 1
        self.last_bytes = used
        if used / self.limit_bytes >= self.high_water_ratio:
            self.ticks_over_high_water += 1
        if used > self.peak_bytes:
            self.peak_bytes, self.peak_members = used, len(members)
        self.cost_seconds += time.thread_time() - started
        self.calls += 1
        return ContainerMemory(used, self.limit_bytes, "simulated")

    def restart_counts(self) -> dict[str, int]:
        """The counts so far (the boot), then zero: the cases are counted on their own."""
        before = {"peak_bytes": self.peak_bytes, "ticks": self.ticks,
                  "ticks_over_high_water": self.ticks_over_high_water}
        self.peak_bytes = self.ticks = self.ticks_over_high_water = 0
        return before

    @property
    def supervisor_pss_bytes(self) -> int:
        reading = self.readings.get(os.getpid())
        return reading.pss if reading else 0


class FlagSampler(threading.Thread):
    """Every 20 ms: is the watchdog over high water (claims stopped) or critical?"""

    def __init__(self, watchdog: Any) -> None:
        super().__init__(name="bench-container-flags", daemon=True)
        self.watchdog = watchdog
        self.stop_flag = threading.Event()
        self.samples = 0
        self.high_water_samples = 0
        self.critical_samples = 0

    def run(self) -> None:
        while not self.stop_flag.wait(0.02):
            self.samples += 1
            self.high_water_samples += bool(self.watchdog.over_high_water)
            self.critical_samples += bool(self.watchdog.over_critical)


async def _cases(sup: Any, url: str, payloads: dict[str, dict[str, Any]], jobs: dict[str, int],
                 reader: SimulatedContainer) -> dict[str, Any]:
    """Each case drained in turn, from idle children."""
    from bench.run import connect, one_case, wait_children_idle

    cases: dict[str, Any] = {}
    conn = await connect(url)
    try:
        for name, n in jobs.items():
            await wait_children_idle(sup)
            cases[name] = await one_case(conn, payloads[name], n, timeout=900)
            print(f"  container {name}: {cases[name]['completed']}/{n},"
                  f" peak {reader.peak_bytes / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    finally:
        await conn.close()
    return cases


async def _run(settings: Settings, url: str, payloads: dict[str, dict[str, Any]],
               jobs: dict[str, int], limit_bytes: int) -> dict[str, Any]:
    from bench.run import wait_children_idle
    from supervisor.runner import Supervisor

    p = settings.pool
    reader = SimulatedContainer(limit_bytes, p.container_high_water_percent / 100)
    sup = Supervisor(settings, url, serve_http=False)
    task = asyncio.create_task(sup.run())
    started = asyncio.create_task(sup.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED, timeout=120)
    if task.done():
        task.result()
        raise RuntimeError("supervisor exited during start")
    # Before the watchdog's first tick (one interval after the start): the limit holds from the boot on.
    sup.parts.watchdog.read_container = reader
    out: dict[str, Any] = {"limit_bytes": limit_bytes, "children": sup.parts.pool.config.size,
                           "slots_per_child": sup.parts.pool.config.slots,
                           "high_water_percent": p.container_high_water_percent,
                           "critical_percent": p.container_critical_percent,
                           "child_memory_limit_mb": p.child_memory_limit_mb, "cases": {}}
    flags = FlagSampler(sup.parts.watchdog)
    try:
        await wait_children_idle(sup)
        await asyncio.sleep(1.5)  # a PSS read of the idle container
        out["idle_bytes"] = reader.last_bytes
        out["boot"] = reader.restart_counts()
        out["load_before"] = load()
        flags.start()
        out["cases"] = await _cases(sup, url, payloads, jobs, reader)
    finally:
        flags.stop_flag.set()
        if flags.is_alive():
            flags.join()
        sup.request_stop()
        await asyncio.wait_for(task, 60)
    out.update({
        "peak_bytes": reader.peak_bytes, "peak_ratio": reader.peak_bytes / limit_bytes,
        "peak_processes": reader.peak_members, "supervisor_pss_bytes": reader.supervisor_pss_bytes,
        "ticks": reader.ticks, "ticks_over_high_water": reader.ticks_over_high_water,
        "flag_samples": flags.samples, "high_water_samples": flags.high_water_samples,
        "critical_samples": flags.critical_samples,
        "claims_stopped": reader.ticks_over_high_water > 0 or flags.high_water_samples > 0,
        "reader_ms_per_tick": 1000 * reader.cost_seconds / max(reader.calls, 1), "pss_reads": reader.pss_reads,
        "kills": dict(sup.parts.pool.stats.kills), "recycles": dict(sup.parts.pool.stats.recycles),
    })
    return out


def run(settings: Settings | None = None, *, medium: int = 60, large: int = 20,
        limit_bytes: int = LIMIT_BYTES) -> dict[str, Any]:
    """The medium and large cases in a simulated 2 GiB container, with the settings' pool
    (MAX_CONCURRENT_RENDERS renders in all, SLOTS_PER_CHILD per child; by default 3 x 1)."""
    from bench.docs import ImageServer, documents
    from bench.run import ADMIN_URL, DB_NAME, bench_settings, recreate_database
    from supervisor.queue.migrate import migrate, sync_queue_settings

    base = settings or load_settings()
    with tempfile.TemporaryDirectory(prefix="ew-container-") as tmp, ImageServer() as images:
        url = recreate_database()
        try:
            migrate(url)
            s = bench_settings(base, url, Path(tmp) / "data", images.port)
            sync_queue_settings(url, s)
            return asyncio.run(_run(s, url, documents(images.port), {"medium": medium, "large": large},
                                    limit_bytes))
        finally:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def table(res: dict[str, Any]) -> str:
    """The run as Markdown: memory against the limit, the high-water ticks, throughput, kills."""
    mib = 2**20
    limit = res["limit_bytes"]
    cases = res["cases"]
    high = res["high_water_percent"] / 100 * limit
    lines = [
        f"| {res['children']} children x {res.get('slots_per_child', 1)} slots in a simulated"
        f" {limit / 2**30:.0f} GiB container | value |",
        "|---|---:|",
        f"| boot: peak, ticks over high water | {res['boot']['peak_bytes'] / mib:.0f} MiB,"
        f" {res['boot']['ticks_over_high_water']} of {res['boot']['ticks']} |",
        f"| idle container memory (PSS) | {res['idle_bytes'] / mib:.0f} MiB ({res['idle_bytes'] / limit:.0%}) |",
        f"| peak container memory (PSS), medium and large | {res['peak_bytes'] / mib:.0f} MiB ({res['peak_ratio']:.0%},"
        f" {res['peak_processes']} processes) |",
        f"| high water ({res['high_water_percent']}%) / critical ({res['critical_percent']}%) |"
        f" {high / mib:.0f} / {res['critical_percent'] / 100 * limit / mib:.0f} MiB |",
        f"| watchdog ticks over high water | {res['ticks_over_high_water']} of {res['ticks']} |",
        f"| claims stopped (over_high_water sampled every 20 ms) | {'yes' if res['claims_stopped'] else 'no'}"
        f" ({res['high_water_samples']} of {res['flag_samples']} samples) |",
    ]
    for name, case in cases.items():
        lines.append(f"| {name}: completed, jobs/s, p95 latency | {case['completed']}/{case['jobs']},"
                     f" {case['per_s']:.2f}/s, {case['p95_s']:.1f} s |")
    lines += [
        f"| kills | {res['kills'] or 'none'} |",
        f"| recycles | {res['recycles'] or 'none'} |",
        f"| simulated reader's CPU per tick | {res['reader_ms_per_tick']:.2f} ms ({res['pss_reads']} PSS reads) |",
        f"| load before | {res['load_before'][0]:.1f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--medium", type=int, default=60)
    ap.add_argument("--large", type=int, default=20)
    ap.add_argument("--limit-mib", type=int, default=LIMIT_BYTES // 2**20)
    ap.add_argument("--out", default="bench/results/container.json")
    args = ap.parse_args()
    res = run(medium=args.medium, large=args.large, limit_bytes=args.limit_mib * 2**20)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2), encoding="utf-8")
    print(table(res))


if __name__ == "__main__":
    main()
