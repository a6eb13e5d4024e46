"""Capacity model: database time per job, and 1, 2, 4 supervisors on one database.

Starts its own embedded PostgreSQL (supervisor.queue.database.start_embedded) on a cluster
initialised here with ``shared_preload_libraries = pg_stat_statements``, so the
statements of every supervisor are counted by the server itself. Per round: N
supervisor processes (null render children, 3 each) boot; the stats are reset; the
jobs are created in one transaction (all visible at once, one wake-up); the round
ends when none is pending or processing. Per round it records jobs/s, the server's
CPU seconds (all postgres processes, psutil), WAL bytes (pg_stat_wal), peak
connections, and per operation (create, claim, heartbeat, complete, outbox) the
calls and execution time from pg_stat_statements.

    PYTHONPATH=. .venv/bin/python -m bench.capacity [--jobs 3000] [--supervisors 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import psutil
import psycopg

from bench.stats import load
from shared.config import Settings, load_settings

# The named queries (supervisor/queue/queries/*.sql) by the operation of a job's life they serve.
OPERATIONS = {
    "create": ("create_job",),
    "claim": ("claim_jobs", "next_available_in"),
    "heartbeat": ("heartbeat", "fence_uploads"),
    "complete": ("complete_jobs", "forget_upload"),
    "outbox": ("outbox_claim", "outbox_done", "outbox_disabled", "outbox_failed", "get_job"),
}
PRELOAD = "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = 'top'\nmax_connections = 200\n"


def _shape(text: str) -> str:
    """A statement without comments, parameters, constants and whitespace: the same for our
    text and pg_stat_statements' (which turns every constant, NULL included, into $n)."""
    text = re.sub(r"--[^\n]*", "", text)
    text = re.sub(r"%\(\w+\)s|\$\d+|%s|'[^']*'|\bnull\b|\b\d+\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+|;", "", text).lower()[:160]


@functools.cache
def _shapes() -> dict[str, str]:
    from supervisor.delivery.outbox import outbox_queries
    from supervisor.queue.queries import load as load_queries

    shapes = {_shape(q.as_string(None)): name for name, q in load_queries().items()}
    for table, done_column in (("export_mail_outbox", "sent_at"), ("export_webhook_outbox", "delivered_at")):
        for name, q in outbox_queries(table, done_column).items():  # one text per outbox table
            shapes[_shape(q.as_string(None))] = f"outbox_{name}"
    return shapes


def operation_of(statement: str) -> str:
    name = _shapes().get(_shape(statement))
    return next((op for op, names in OPERATIONS.items() if name in names), f"other: {name}" if name else "other")


def start_server(data_dir: Path) -> tuple[Any, str]:
    """The project's embedded server, restarted once with pg_stat_statements preloaded."""
    from supervisor.queue.database import start_embedded

    start_embedded(data_dir).cleanup()  # initdb (as the server's own user when root), then stop
    with (data_dir / "postgres" / "postgresql.conf").open("a", encoding="utf-8") as fh:
        fh.write(PRELOAD)
    server = start_embedded(data_dir)
    return server, server.get_uri("export_worker")


def supervisor_main(url: str, settings: Settings, index: int, ready: Any, stop: Any) -> None:
    """Spawn target: one Supervisor with null children until `stop` is set."""
    from bench.run import Running
    from render_child.null_child import null_child_entry

    worker = msgspec.structs.replace(settings.worker, worker_id=f"capacity-{index}")
    settings = msgspec.structs.replace(settings, worker=worker)

    async def main() -> None:
        async with Running(settings, url, child_target=null_child_entry):
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(main())


def server_cpu(pid: int) -> float:
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def one_round(url: str, settings: Settings, server_pid: int, supervisors: int, jobs: int) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    from supervisor.queue.queries import query

    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(supervisors)]
    stop = ctx.Event()
    procs = [ctx.Process(target=supervisor_main, args=(url, settings, i, ready[i], stop)) for i in range(supervisors)]
    for p in procs:
        p.start()
    try:
        for ev in ready:
            if not ev.wait(180):
                raise RuntimeError("a supervisor did not start in 180 s")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
            wal0 = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()[0]  # type: ignore[index]
            before = load()
            users = [str(uuid.uuid4()) for _ in range(8)]
            payload = Jsonb({"source": {"kind": "html", "html": "<p>capacity</p>"}})
            with conn.transaction():
                for i in range(jobs):
                    conn.execute(query("create_job"), {
                        "user_id": users[i % 8], "export_type": "pdf", "payload": payload, "menu_id": None,
                        "subscriber": True, "idempotency_key": None, "recipient": "bench@example.com",
                        "webhook_url": None})
            cpu0 = server_cpu(server_pid)
            peak_conn = 0
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                left = conn.execute("SELECT count(*) FROM export_jobs WHERE status IN ('pending','processing')"
                                    ).fetchone()[0]  # type: ignore[index]
                peak_conn = max(peak_conn, conn.execute("SELECT count(*) FROM pg_stat_activity"
                                                        " WHERE backend_type = 'client backend'"
                                                        ).fetchone()[0])  # type: ignore[index]
                if left == 0:
                    break
                time.sleep(0.05)
            cpu1 = server_cpu(server_pid)
            time.sleep(1.0)  # let the outbox senders catch up before the statements are read
            wal1 = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()[0]  # type: ignore[index]
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed'),"
                " extract(epoch FROM max(completed_at) - min(started_at))::float8 FROM export_jobs"
                " WHERE user_id = ANY(%s::uuid[])", (users,)).fetchone()
            assert row is not None
            completed, wall = row
            stmts = conn.execute("SELECT query, calls, total_exec_time, rows, wal_bytes FROM pg_stat_statements"
                                 ).fetchall()
    finally:
        stop.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    ops: dict[str, dict[str, float]] = {}
    for text, calls, ms, rows, wal in stmts:
        op = operation_of(text)
        agg = ops.setdefault(op, {"calls": 0, "exec_ms": 0.0, "rows": 0, "wal_bytes": 0})
        agg["calls"] += calls
        agg["exec_ms"] += ms
        agg["rows"] += rows
        agg["wal_bytes"] += int(wal)
    per_job = {op: {"calls_per_job": v["calls"] / jobs, "exec_ms_per_job": v["exec_ms"] / jobs,
                    "wal_bytes_per_job": v["wal_bytes"] / jobs} for op, v in ops.items()}
    top = sorted(stmts, key=lambda st: -st[2])[:25]
    statements = [{"operation": operation_of(t), "calls_per_job": c / jobs, "exec_ms_per_job": ms / jobs,
                   "query": " ".join(t.split())[:160]} for t, c, ms, _, _ in top]
    return {"supervisors": supervisors, "jobs": jobs, "completed": completed, "statements": statements, "wall_s": wall,
            "per_s": completed / wall if wall else 0.0, "server_cpu_s": cpu1 - cpu0,
            "server_cpu_ms_per_job": 1000 * (cpu1 - cpu0) / jobs, "wal_bytes_per_job": int(wal1 - wal0) / jobs,
            "peak_client_connections": peak_conn, "operations": per_job, "load_before": before}


def run(jobs: int, counts: list[int]) -> dict[str, Any]:
    from bench.run import bench_settings
    from supervisor.queue.migrate import migrate, sync_queue_settings

    out: dict[str, Any] = {"rounds": []}
    with tempfile.TemporaryDirectory(prefix="ew-capacity-") as tmp:
        server, url = start_server(Path(tmp) / "pg")
        try:
            migrate(url)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                out["server_version"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            settings = bench_settings(load_settings(), url, Path(tmp) / "data", 1)
            sync_queue_settings(url, settings)
            pid = server.get_pid()
            for n in counts:
                print(f"capacity: {n} supervisor(s), {jobs} jobs", file=sys.stderr, flush=True)
                res = one_round(url, settings, pid, n, jobs)
                print(f"  {res['per_s']:.0f} jobs/s, server {res['server_cpu_ms_per_job']:.2f} ms CPU/job,"
                      f" load {res['load_before'][0]}", file=sys.stderr, flush=True)
                out["rounds"].append(res)
        finally:
            server.cleanup()
    return out


def table(res: dict[str, Any]) -> str:
    """The rounds, and the per-operation database time per job of each, as Markdown."""
    lines = ["| supervisors | jobs | jobs/s | server CPU ms/job | WAL bytes/job | peak connections | load |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rounds"]:
        lines.append(f"| {r['supervisors']} | {r['completed']}/{r['jobs']} | {r['per_s']:.0f} | "
                     f"{r['server_cpu_ms_per_job']:.2f} | {r['wal_bytes_per_job']:.0f} | "
                     f"{r['peak_client_connections']} | {r['load_before'][0]:.1f} |")
    lines += ["", "| supervisors | operation | calls/job | exec ms/job | WAL bytes/job |", "|---:|---|---:|---:|---:|"]
    for r in res["rounds"]:
        for op, v in sorted(r["operations"].items(), key=lambda kv: -kv[1]["exec_ms_per_job"]):
            lines.append(f"| {r['supervisors']} | {op} | {v['calls_per_job']:.2f} | {v['exec_ms_per_job']:.3f} | "
                         f"{v['wal_bytes_per_job']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--supervisors", default="1,2,4")
    ap.add_argument("--out", default="bench/results/capacity.json")
    args = ap.parse_args()
    res = run(args.jobs, [int(x) for x in args.supervisors.split(",")])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2), encoding="utf-8")
    print(table(res))


if __name__ == "__main__":
    main()
