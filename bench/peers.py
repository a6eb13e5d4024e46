"""Peer queues (the `bench` extra): pgqueuer and procrastinate drain N no-op jobs.

Same database as the pipeline's null-renderer row, same job count, one worker,
concurrency = MAX_CONCURRENT_RENDERS. Jobs are inserted first (not timed); the
figure is jobs / (worker start to queue empty). Either library missing: the row
says so and the bench goes on (`--smoke` and CI need neither).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from typing import Any

from bench.stats import load

PEERS = ("pgqueuer", "procrastinate")
# What each peer row imports (pgqueuer runs on asyncpg, its own driver).
NEEDS = {"pgqueuer": ("pgqueuer", "asyncpg"), "procrastinate": ("procrastinate",)}


def missing(name: str, module: str) -> dict[str, Any]:
    line = f"{module} is not installed (pip install -e '.[bench]'): {name} peer row skipped"
    print(f"  {line}", file=sys.stderr, flush=True)
    return {"status": "not installed", "note": line}


async def _pgqueuer(url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    from importlib.metadata import version

    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    # asyncpg, pgqueuer's own driver: over one psycopg connection its dequeue waited on
    # the 30 s dequeue timeout between batches (105 of 3000 jobs in 90 s here).
    conn = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
        qm = QueueManager(queries)
        done = 0

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            nonlocal done
            done += 1

        t0 = time.perf_counter()
        await asyncio.wait_for(qm.run(mode=QueueExecutionMode.drain, batch_size=concurrency), 300)
        wall = time.perf_counter() - t0
    finally:
        await conn.close()
    return {"status": "measured", "version": version("pgqueuer"), "jobs": jobs, "completed": done,
            "wall_s": wall, "per_s": done / wall if wall else 0.0, "concurrency": concurrency}


async def _procrastinate(url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    from importlib.metadata import version

    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    done = 0

    @app.task(name="noop")
    async def noop() -> None:
        nonlocal done
        done += 1

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, 1000):
            await noop.batch_defer_async(*({} for _ in range(min(1000, jobs - start))))
        t0 = time.perf_counter()
        await asyncio.wait_for(app.run_worker_async(concurrency=concurrency, wait=False,
                                                    install_signal_handlers=False), 300)
        wall = time.perf_counter() - t0
    return {"status": "measured", "version": version("procrastinate"), "jobs": jobs, "completed": done,
            "wall_s": wall, "per_s": done / wall if wall else 0.0, "concurrency": concurrency}


RUNNERS = {"pgqueuer": _pgqueuer, "procrastinate": _procrastinate}


def peers(url: str, jobs: int, concurrency: int) -> dict[str, dict[str, Any]]:
    """Each peer's drain of `jobs` no-op jobs, or why it was skipped."""
    out: dict[str, dict[str, Any]] = {}
    for name in PEERS:
        absent = [module for module in NEEDS[name] if importlib.util.find_spec(module) is None]
        if absent:
            out[name] = missing(name, absent[0])
            continue
        print(f"bench: peer {name}", file=sys.stderr, flush=True)
        before = load()
        out[name] = {**asyncio.run(RUNNERS[name](url, jobs, concurrency)), "load_before": before}
    return out
