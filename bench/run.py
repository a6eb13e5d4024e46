"""`export-worker bench`: the full pipeline against its ceiling and the seed's approach.

All measurements run in one process (the supervisor runs in this process, so its
RSS is this process's), on one fresh database (``ew_bench``, dropped and recreated
per run), with the same documents and the same parallelism (MAX_CONCURRENT_RENDERS).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import psutil
import psycopg

from bench import console, poison
from bench.report import goals, table
from bench.stats import load, pct
from shared.chromium import configured_browser
from shared.config import Settings

log = logging.getLogger("bench")
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Per process: two benches at once (CI, another engineer) must not drop each other's database.
DB_NAME = os.environ.get("BENCH_DB_NAME", f"ew_bench_{os.getpid()}")
HIGH = 1_000_000
DOCS = ("light", "small", "medium", "large")
# The seed's browser-per-job loop: the menus only (a launch per job dwarfs any document).
SEED_DOCS = ("small", "medium", "large")
# Per-case share of --jobs: the large menu is ~10 pages, so fewer of it keeps the run short.
SHARE = {"light": 1.0, "small": 1.0, "medium": 0.5, "large": 0.25}


# ---- small helpers -------------------------------------------------------------------


def _db_url() -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{DB_NAME}"


def recreate_database(*, migrate_it: bool = False) -> str:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    if migrate_it:
        from supervisor.queue.migrate import migrate

        migrate(_db_url())
    return _db_url()


def bench_settings(settings: Settings, url: str, data_dir: Path, image_port: int, *,
                   listen_notify: bool = True) -> Settings:
    r = msgspec.structs.replace
    return r(
        settings,
        data_dir=str(data_dir),
        database=r(settings.database, database_url=url, listen_notify=listen_notify),
        worker=r(settings.worker, log_level="warning", worker_id=f"bench-{os.getpid()}"),
        render=r(settings.render, allowed_hosts=["127.0.0.1"],
                 trusted_private_hosts=[f"127.0.0.1:{image_port}"]),
        limits=r(settings.limits, free_user_hourly_limit=HIGH, subscriber_hourly_limit=HIGH,
                 free_user_pending_limit=HIGH, subscriber_pending_limit=HIGH),
    )


class Running:
    """A Supervisor running in this process's event loop."""

    def __init__(self, settings: Settings, url: str, child_target: Any = None) -> None:
        from supervisor.runner import Supervisor

        self.sup = Supervisor(settings, url, child_target=child_target, serve_http=False)
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Any:
        self.task = asyncio.create_task(self.sup.run())
        started = asyncio.create_task(self.sup.started.wait())
        await asyncio.wait([self.task, started], return_when=asyncio.FIRST_COMPLETED, timeout=120)
        if self.task.done():
            self.task.result()
            raise RuntimeError("supervisor exited during start")
        started.cancel()
        await wait_children_idle(self.sup)
        return self.sup

    async def __aexit__(self, *exc: Any) -> None:
        self.sup.request_stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 60)


async def wait_children_idle(sup: Any, timeout: float = 120) -> None:
    """Until every child of the pool is up and idle: MAX_CONCURRENT_RENDERS / SLOTS_PER_CHILD
    of them (the pool's size), not one per render slot."""
    size = sup.parts.pool.config.size
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(sup.parts.pool.idle_children()) == size:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("render children did not become idle")


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def create_one(conn: psycopg.AsyncConnection[Any], user: str, payload: dict[str, Any],
                     email: str | None = None) -> str:
    from bench.jobs import create_job_params
    from supervisor.queue.queries import query

    cur = await conn.execute(query("create_job"), create_job_params(user, payload, email))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


# ---- 1 + 7: end to end, memory -------------------------------------------------------


class MemorySampler(threading.Thread):
    """Every 100 ms: the watchdog's latest PSS of each child's whole process tree; keeps the peak."""

    def __init__(self, sup: Any) -> None:
        super().__init__(name="bench-memory", daemon=True)
        self.sup = sup
        self.stop_flag = threading.Event()
        self.peak_tree = 0
        self.peak_total = 0
        self.samples = 0

    def run(self) -> None:
        # The watchdog already measures every child's tree PSS (supervisor.pool.memory) each
        # watchdog_interval_ms and keeps it in handle.memory_bytes: read that. Measuring
        # again here (smaps_rollup of every Chromium process every 100 ms) took ~0.5 of a
        # core on 2 cores during the end-to-end run (py-spy) and slowed what it measured.
        while not self.stop_flag.wait(0.1):
            total = 0
            for handle in list(self.sup.parts.pool.handles):
                if not handle.pid:
                    continue
                pss = int(getattr(handle, "memory_bytes", 0) or 0)
                self.peak_tree = max(self.peak_tree, pss)
                total += pss
            self.peak_total = max(self.peak_total, total)
            self.samples += 1


def idle_split(sup: Any) -> dict[str, int]:
    """PSS by process role (bench.memsplit.role) of the largest idle child tree."""
    from bench.memsplit import role
    from supervisor.pool.memory import tree

    best: dict[str, int] = {}
    for handle in sup.parts.pool.idle_children():
        split: dict[str, int] = {}
        for proc in tree(handle.pid):
            try:
                pss = proc.memory_full_info().pss
            except psutil.Error:
                continue
            name = role(proc, handle.pid)
            split[name] = split.get(name, 0) + pss
        if sum(split.values()) > sum(best.values()):
            best = split
    return best


async def one_case(conn: psycopg.AsyncConnection[Any], payload: dict[str, Any], n: int,
                   timeout: float = 600) -> dict[str, Any]:
    """`n` jobs of one new user, created one by one as fast as one connection can, until all
    are final: jobs/s from the first creation to the last completion, latency per job."""
    before = load()
    user = str(uuid.uuid4())
    ids = [await create_one(conn, user, payload) for _ in range(n)]
    deadline = time.monotonic() + timeout
    while True:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status IN ('completed','failed','cancelled')),"
            " count(*) FILTER (WHERE status = 'completed') FROM export_jobs WHERE user_id = %s", (user,))
        done, ok = await cur.fetchone()  # type: ignore[misc]
        if done >= n or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    cur = await conn.execute(
        "SELECT extract(epoch FROM created_at)::float8, extract(epoch FROM completed_at)::float8,"
        " (metadata->>'pages')::int FROM export_jobs WHERE user_id = %s AND status = 'completed'", (user,))
    rows = await cur.fetchall()
    lat = [c - a for a, c, _ in rows]
    wall = max(c for _, c, _ in rows) - min(a for a, _, _ in rows) if rows else float("nan")
    return {"jobs": n, "completed": ok, "failed": n - ok, "wall_s": wall,
            "per_s": ok / wall if wall else 0.0, "per_min": 60 * ok / wall if wall else 0.0,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
            "pages": rows[0][2] if rows else None, "job_ids_sample": ids[:1], "load_before": before}


async def end_to_end(settings: Settings, url: str, payloads: dict[str, dict[str, Any]],
                     jobs: dict[str, int]) -> dict[str, Any]:
    from supervisor.pool.memory import tree, tree_pss_bytes

    out: dict[str, Any] = {"cases": {}}
    async with Running(settings, url) as sup:
        await asyncio.sleep(0.5)  # let the canary's page settle
        idle = [tree_pss_bytes(tree(h.pid)) for h in sup.parts.pool.idle_children()]
        out["idle_child_tree_pss_bytes"] = max(idle)
        out["idle_child_tree_pss_all"] = idle
        out["idle_child_split"] = idle_split(sup)
        out["supervisor_rss_idle_bytes"] = psutil.Process().memory_info().rss
        out["browser_version"] = next((h.browser_version for h in sup.parts.pool.handles if h.browser_version), "")
        sampler = MemorySampler(sup)
        sampler.start()
        conn = await connect(url)
        try:
            for name in (d for d in DOCS if d in payloads):
                await wait_children_idle(sup)
                out["cases"][name] = case = await one_case(conn, payloads[name], jobs[name])
                print(f"  end-to-end {name}: {case['completed']}/{case['jobs']} in {case['wall_s']:.1f}s"
                      f" (load {case['load_before'][0]})", file=sys.stderr, flush=True)
        finally:
            sampler.stop_flag.set()
            sampler.join()
            await conn.close()
        out["peak_child_tree_pss_bytes"] = sampler.peak_tree
        out["peak_children_total_pss_bytes"] = sampler.peak_total
        out["memory_samples"] = sampler.samples
        out["supervisor_rss_after_bytes"] = psutil.Process().memory_info().rss
        out["pool_stats"] = {"recycles": dict(sup.parts.pool.stats.recycles), "kills": dict(sup.parts.pool.stats.kills)}
    return out


# ---- 4: pickup latency ---------------------------------------------------------------


async def pickup(settings: Settings, url: str, samples: int) -> dict[str, Any]:
    from render_child.null_child import null_child_entry

    payload = {"source": {"kind": "html", "html": "<p>pickup</p>"}}
    before = load()
    lat: list[float] = []
    async with Running(settings, url, child_target=null_child_entry):
        conn = await connect(url)
        try:
            user = str(uuid.uuid4())
            for _ in range(samples):
                job = await create_one(conn, user, payload)
                while True:
                    cur = await conn.execute(
                        "SELECT extract(epoch FROM started_at - created_at)::float8 FROM export_jobs"
                        " WHERE id = %s AND started_at IS NOT NULL", (job,))
                    row = await cur.fetchone()
                    if row is not None:
                        lat.append(row[0])
                        break
                    await asyncio.sleep(0.002)
                await asyncio.sleep(0.02)  # let the job finish; the worker is idle again
        finally:
            await conn.close()
    return {"samples": len(lat), "p50_ms": pct(lat, 50) * 1000, "p95_ms": pct(lat, 95) * 1000,
            "max_ms": max(lat) * 1000 if lat else float("nan"), "load_before": before}


# ---- 5: creation latency -------------------------------------------------------------


async def creation(url: str, calls: int, clients: int) -> dict[str, Any]:
    payload = {"source": {"kind": "html", "html": "<p>creation</p>"}}
    lat: list[float] = []
    per_client = calls // clients

    async def client() -> None:
        conn = await connect(url)
        user = str(uuid.uuid4())
        try:
            await create_one(conn, user, payload)  # warm the connection (not counted)
            for _ in range(per_client):
                t0 = time.perf_counter()
                await create_one(conn, user, payload)
                lat.append(time.perf_counter() - t0)
        finally:
            await conn.close()

    before = load()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"calls": len(lat), "clients": clients, "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
            "per_s": len(lat) / wall, "load_before": before}


# ---- 6: null renderer throughput -----------------------------------------------------


async def null_throughput(settings: Settings, url: str, jobs: int) -> dict[str, Any]:
    from render_child.null_child import null_child_entry

    conn = await connect(url)
    try:
        cur = await conn.execute("SELECT count(*) FROM export_jobs WHERE status = 'pending'")
        pending = (await cur.fetchone())[0]  # type: ignore[index]
        payload = {"source": {"kind": "html", "html": "<p>null</p>"}}
        missing = max(jobs - pending, 0)
        users = [str(uuid.uuid4()) for _ in range(4)]
        for i in range(missing):
            # With a recipient: the queue path includes the mail outbox, as every real job does.
            await create_one(conn, users[i % 4], payload, email="bench@example.com")
        before = load()
        t0 = time.perf_counter()
        async with Running(settings, url, child_target=null_child_entry) as sup:
            while True:
                cur = await conn.execute("SELECT count(*) FROM export_jobs WHERE status IN ('pending','processing')")
                left = (await cur.fetchone())[0]  # type: ignore[index]
                if left == 0 or time.perf_counter() - t0 > 300:
                    break
                await asyncio.sleep(0.05)
            del sup
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'completed'),"
            " extract(epoch FROM max(completed_at) - min(started_at))::float8 FROM export_jobs")
        total, completed, wall = await cur.fetchone()  # type: ignore[misc]
    finally:
        await conn.close()
    return {"jobs": total, "completed": completed, "wall_s": wall, "per_s": completed / wall if wall else 0.0,
            "load_before": before}


def run_null_command(settings: Settings, *, jobs: int, out: Path) -> int:
    """`export-worker bench null [--jobs N]`: the null renderer's row alone, on a fresh database."""
    from bench.report import null_row
    from supervisor.queue.migrate import sync_queue_settings

    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ew-bench-") as tmp:
        url = recreate_database(migrate_it=True)
        s_notify = bench_settings(settings, url, Path(tmp) / "data", 1)
        sync_queue_settings(url, s_notify)
        try:
            result = asyncio.run(null_throughput(s_notify, url, jobs))
        finally:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    print("| case | document | jobs | jobs/min | jobs/s | of bare | p50 | p95 | load |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|\n" + null_row(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"null_renderer": result}, indent=2), encoding="utf-8")
    print(f"\nJSON written to {out}")
    return 0


# ---- machine ---------------------------------------------------------------------------


def machine(browser_version: str) -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "chromium": browser_version, "platform": platform.platform()}


# ---- the command ---------------------------------------------------------------------


def run_bench(settings: Settings, *, smoke: bool = False, jobs: int = 200, out: Path | None = None) -> int:
    from bench.docs import ImageServer, documents, payload_html
    from bench.peers import peers
    from supervisor.queue.migrate import migrate, sync_queue_settings

    logging.getLogger().setLevel(logging.WARNING)
    t_start = time.perf_counter()
    if smoke:
        jobs = min(jobs, 6)
    per_case = {name: max(3, int(jobs * SHARE[name])) for name in DOCS}
    null_jobs = 200 if smoke else 3000
    lanes = settings.worker.max_concurrent_renders
    results: dict[str, Any] = {"smoke": smoke, "parallelism": lanes, "jobs_per_case": per_case}

    with tempfile.TemporaryDirectory(prefix="ew-bench-") as tmp, ImageServer() as images:
        payloads = documents(images.port)
        url = recreate_database()
        migrate(url)
        s_notify = bench_settings(settings, url, Path(tmp) / "data", images.port)
        s_poll = bench_settings(settings, url, Path(tmp) / "data", images.port, listen_notify=False)
        sync_queue_settings(url, s_notify)
        _queue_rows(results, url, s_notify, s_poll, smoke=smoke, null_jobs=null_jobs)
        print("bench: end to end", file=sys.stderr, flush=True)
        e2e = asyncio.run(end_to_end(s_notify, url, payloads, per_case))
        results["end_to_end"] = {"cases": e2e["cases"], "pool_stats": e2e["pool_stats"]}
        results["memory"] = _memory(e2e)
        _browser_rows(results, settings, {k: payload_html(v) for k, v in payloads.items()}, per_case, smoke=smoke)
        # Last: the peers' imports (pydantic, asyncpg...) would otherwise count in the supervisor's RSS.
        results["peers"] = peers(url, null_jobs, lanes)
        # After the memory figures: the console's pages on a full table (a smoke run: a small one), in the
        # bench database recreated empty.
        print("bench: console pages", file=sys.stderr, flush=True)
        results["console"] = console.run(settings, recreate_database(migrate_it=True),
                                         jobs=2000 if smoke else console.JOBS, rounds=2 if smoke else console.ROUNDS)
        if not smoke:  # two supervisors with real children, four times: full runs only
            print("bench: a poison job beside normal work", file=sys.stderr, flush=True)
            results["poison"] = poison.run(str(Path(tmp) / "poison"), recreate_database(migrate_it=True))
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    _own_server_rows(results, settings, smoke=smoke, null_jobs=null_jobs)
    results["machine"] = machine(e2e.get("browser_version", ""))
    results["total_s"] = time.perf_counter() - t_start
    results["goals"] = [{"goal": n, "measured": v, "target": g, "met": m} for n, v, g, m in goals(results)]
    _report(results, out)
    return 0


def _own_server_rows(results: dict[str, Any], settings: Settings, *, smoke: bool, null_jobs: int) -> None:
    """The cases with their own servers: capacity, the 2 GiB container."""
    from bench import capacity, container

    # Its own embedded server (pg_stat_statements preloaded): 1, 2 and 4 supervisors.
    # The smoke run keeps both paths working with a few jobs (CI runs it).
    print("bench: capacity", file=sys.stderr, flush=True)
    results["capacity"] = capacity.run(30, [1]) if smoke else capacity.run(null_jobs, [1, 2, 4])
    # The default 3 children through medium and large in a simulated 2 GiB container.
    print("bench: 2 GiB container", file=sys.stderr, flush=True)
    results["container"] = container.run(settings, medium=3, large=1) if smoke else container.run(settings)


def _queue_rows(results: dict[str, Any], url: str, s_notify: Settings, s_poll: Settings, *, smoke: bool,
                null_jobs: int) -> None:
    """Creation latency, the null renderer's drain, pickup latency (NOTIFY and polling)."""
    pickups_notify, pickups_poll = (5, 2) if smoke else (50, 12)
    print("bench: creation latency", file=sys.stderr, flush=True)
    results["creation"] = asyncio.run(creation(url, 80 if smoke else 2000, 8))
    print("bench: null renderer", file=sys.stderr, flush=True)
    results["null_renderer"] = asyncio.run(null_throughput(s_notify, url, null_jobs))
    print("bench: pickup latency", file=sys.stderr, flush=True)
    results["pickup"] = {"notify": asyncio.run(pickup(s_notify, url, pickups_notify)),
                         "polling": asyncio.run(pickup(s_poll, url, pickups_poll)),
                         "polling_interval_idle_ms": s_poll.worker.polling_interval_idle_ms}


def _memory(e2e: dict[str, Any]) -> dict[str, Any]:
    keys = ("idle_child_tree_pss_bytes", "idle_child_tree_pss_all", "idle_child_split", "supervisor_rss_after_bytes",
            "peak_child_tree_pss_bytes", "peak_children_total_pss_bytes", "memory_samples")
    return {"supervisor_rss_bytes": e2e["supervisor_rss_idle_bytes"], **{k: e2e[k] for k in keys}}


def _browser_rows(results: dict[str, Any], settings: Settings, html: dict[str, str], per_case: dict[str, int], *,
                  smoke: bool) -> None:
    """The browser-only loops: the bare ceiling (best of three), the policy ceiling, browser per job."""
    from bench.browsers import LaneMode, best_of, browser_loops

    lanes = settings.worker.max_concurrent_renders
    executable = configured_browser(settings.render).executable_path
    seed_jobs = {name: 3 if smoke else 20 for name in SEED_DOCS}
    seed_jobs["large"] = 3 if smoke else 10
    print("bench: ceiling (bare warm pages, best of three)", file=sys.stderr, flush=True)
    results["ceiling"] = best_of(1 if smoke else 3, LaneMode.BARE, lanes, executable, html, per_case)
    print("bench: ceiling under isolation (bare loop, a context per job, best of three)", file=sys.stderr, flush=True)
    results["ceiling_context"] = best_of(1 if smoke else 3, LaneMode.BARE_CONTEXT, lanes, executable, html, per_case)
    print("bench: ceiling with the product's network policy", file=sys.stderr, flush=True)
    results["ceiling_policy"] = browser_loops(LaneMode.WARM, lanes, executable, html, per_case)
    print("bench: browser per job", file=sys.stderr, flush=True)
    results["browser_per_job"] = browser_loops(LaneMode.PER_JOB, lanes, executable, html, seed_jobs, docs=SEED_DOCS)
    print("bench: browser per job, the child's flags", file=sys.stderr, flush=True)
    results["browser_per_job_child_flags"] = browser_loops(
        LaneMode.PER_JOB_CHILD, lanes, executable, html, seed_jobs, docs=("small",))


def _report(results: dict[str, Any], out: Path | None) -> None:
    """Every table on stdout; the JSON in `out`."""
    from bench.capacity import table as capacity_table
    from bench.container import table as container_table

    text = table(results, DOCS)
    text += "\n\nCapacity (bench/capacity.py):\n\n" + capacity_table(results["capacity"])
    text += "\n\n2 GiB container (bench/container.py):\n\n" + container_table(results["container"])
    text += "\n\nConsole pages (bench/console.py):\n\n" + console.table(results["console"])
    if "poison" in results:
        text += "\n\nA poison job beside normal work (bench/poison.py):\n\n" + poison.table(results["poison"])
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        print(f"\nJSON written to {out}")
