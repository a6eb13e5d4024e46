"""A fleet through one pooler (issue #21, item 9): many workers, one PgBouncer, a small server.

A throwaway PostgreSQL 15 with ``max_connections = 60`` (Supabase's smallest compute),
one PgBouncer in transaction mode with a pool of 20 in front of it (bench.pgbouncer,
configured like Supabase's), and 20 worker processes: each is what ``export-worker serve``
runs (HTTP side included, settings from the environment), with the null render child,
each with its own data dir (mail files, stored files) as separate containers would be.
Their ``DATABASE_URL`` is the pooler. Two fleets are measured in turn: the pooled URL
only (what a user who sets nothing else gets), then with ``DATABASE_LISTEN_URL`` set to
the server directly (LISTEN needs a session).

Per fleet, three rounds (pickup latency = started_at - created_at, both the server's clock):

- burst: N jobs created in one transaction through the pooler (all visible at once);
  jobs/s = completed / (last completed_at - first started_at), as bench/capacity.py
  (its pickup figures are the queue's wait);
- paced: jobs created one by one through the pooler at a steady rate below the
  fleet's capacity: pickup while the fleet is working;
- idle: one job at a time, each created after the previous one started and a pause:
  pickup by a fleet that sits idle (polling at its idle interval, or woken by NOTIFY).

Throughout, a monitor samples pg_stat_activity (this bench's database, the monitor's
own connection left out) and PgBouncer's SHOW POOLS every 100 ms and keeps the peaks.
After each round every job is checked: completed exactly once (status completed,
attempts = 1), one mail row sent, and one mail file in all the workers' data dirs
together (a second file in another worker's dir would be a doubled job).

    export-worker bench fleet [--jobs 2000]
    PYTHONPATH=. .venv/bin/python -m bench.fleet [--workers 20] [--pool-size 20] [--jobs 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from bench.pgbouncer import PgBouncer, PoolMode, admin_show, pgbouncer_binary
from bench.pgprocess import free_port
from bench.pgserver import PgServer
from bench.stats import load, pct

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "export_worker"
MONITOR_APP = "ew-bench-fleet-monitor"  # the bench's own direct connections, left out of the counts
HIGH = "1000000"
START_TIMEOUT_SECONDS = 600.0  # 20 workers and 60 children importing at once on a busy 2-core machine
DRAIN_TIMEOUT_SECONDS = 600.0
SAMPLE_SECONDS = 0.1
LOG_TAIL_CHARS = 4000
IDLE_PAUSE_SECONDS = 0.5


class RoundKind(enum.Enum):
    """How a round's jobs arrive."""

    BURST = "burst"  # all visible at once: the fleet's jobs/s
    PACED = "paced"  # a steady stream below capacity: pickup while working
    IDLE = "idle"  # one at a time, each after the previous started and a pause: an idle fleet's pickup


class Listen(enum.Enum):
    """Where a fleet's LISTEN connection goes."""

    POOLED_ONLY = "DATABASE_URL (pooler) only"
    DIRECT = "DATABASE_LISTEN_URL direct"


@dataclass(frozen=True)
class FleetConfig:
    workers: int = 20
    pool_size: int = 20
    pool_mode: PoolMode = PoolMode.TRANSACTION
    max_connections: int = 60
    jobs: int = 2000  # the burst round
    paced_jobs: int = 300
    paced_per_s: float = 20.0
    idle_jobs: int = 40
    renders_per_worker: int = 3  # MAX_CONCURRENT_RENDERS, the default
    # Departures from the Supabase-like pooler (reported under the table), e.g. ignoring
    # `options` to measure a build that still sends it.
    bouncer_settings: tuple[tuple[str, str], ...] = ()


@dataclass
class Peaks:
    """The highest connection counts seen by the monitor."""

    database: int = 0  # server connections to this bench's database (pooled and direct)
    cluster: int = 0  # every client backend on the server, against max_connections
    pooler_servers: int = 0  # PgBouncer's server connections for the database
    pooler_clients: int = 0  # PgBouncer's client connections for the database (cl_active + cl_waiting)
    pooler_clients_waiting: int = 0  # PgBouncer's cl_waiting: clients queued for a server connection
    samples: int = 0


# ---- one worker: `python -m bench.fleet worker` ---------------------------------------------


def worker_main() -> int:
    """What `export-worker serve` runs, with the null render child; settings from the environment."""
    import asyncio

    from render_child.null_child import null_child_entry
    from shared.config import load_settings
    from shared.logs import setup_logging
    from supervisor.runner import Supervisor

    settings = load_settings()
    setup_logging(settings.worker.log_level, settings.worker.worker_id, sys.stdout)
    supervisor = Supervisor(settings, settings.database.database_url, child_target=null_child_entry)
    code: int = asyncio.run(supervisor.run())
    return code


@dataclass
class Worker:
    index: int
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (urllib.error.URLError, OSError):
            return None

    def failed(self, what: str) -> RuntimeError:
        """The error for a worker that failed: its log's tail on stderr, its last line in the message."""
        try:
            tail = self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except FileNotFoundError:
            tail = ""
        print(f"--- fleet worker {self.index} log ({self.log_path}) ---\n{tail}", file=sys.stderr, flush=True)
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "(empty log)")
        return RuntimeError(f"fleet worker {self.index} {what}: {last.strip()}")


def worker_env(index: int, scratch: Path, pooled_url: str, listen_url: str | None, renders: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "EXPORT_WORKER_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "DATABASE_URL": pooled_url,
        "EXPORT_WORKER_DATA_DIR": str(scratch / f"worker-{index}"),
        "WORKER_ID": f"fleet-{index}",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "LOG_LEVEL": "warning",
        "MAX_CONCURRENT_RENDERS": str(renders),
        # The bench's users create thousands of jobs an hour.
        "FREE_USER_HOURLY_LIMIT": HIGH, "SUBSCRIBER_HOURLY_LIMIT": HIGH,
        "FREE_USER_PENDING_LIMIT": HIGH, "SUBSCRIBER_PENDING_LIMIT": HIGH,
    })
    if listen_url is not None:
        env["DATABASE_LISTEN_URL"] = listen_url
    return env


def start_workers(cfg: FleetConfig, scratch: Path, pooled_url: str, listen_url: str | None) -> list[Worker]:
    workers = []
    for index in range(cfg.workers):
        env = worker_env(index, scratch, pooled_url, listen_url, cfg.renders_per_worker)
        log_path = scratch / f"worker-{index}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "bench.fleet", "worker"], cwd=ROOT, env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        workers.append(Worker(index, int(env["PORT"]), Path(env["EXPORT_WORKER_DATA_DIR"]), log_path, process))
    return workers


def wait_healthy(workers: list[Worker]) -> None:
    """Every worker answers /health 200, or the error names the first that exited or never did."""
    waiting = list(workers)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while waiting and time.monotonic() < deadline:
        for worker in list(waiting):
            if worker.process.poll() is not None:
                raise worker.failed(f"exited {worker.process.returncode} during start")
            if worker.health() == 200:
                waiting.remove(worker)
        time.sleep(0.5)
    if waiting:
        first = waiting[0]
        raise first.failed(f"not healthy after {START_TIMEOUT_SECONDS:.0f} s (/health {first.health()}; "
                           f"{len(waiting)} of {len(workers)} workers not healthy)")


def stop_workers(workers: list[Worker]) -> list[int | None]:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
    codes: list[int | None] = []
    for worker in workers:
        try:
            codes.append(worker.process.wait(90))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
            codes.append(None)
    return codes


# ---- the monitor ------------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Samples the server's and the pooler's connections every SAMPLE_SECONDS; keeps the peaks."""

    def __init__(self, direct_url: str, bouncer: PgBouncer) -> None:
        super().__init__(name="fleet-monitor", daemon=True)
        self.direct_url = direct_url
        self.bouncer = bouncer
        self.peaks = Peaks()
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def reset(self) -> Peaks:
        """The peaks so far; counting starts again from zero."""
        peaks, self.peaks = self.peaks, Peaks()
        return peaks

    def run(self) -> None:
        try:
            with psycopg.connect(self.direct_url, autocommit=True, application_name=MONITOR_APP) as server, \
                    psycopg.connect(self.bouncer.admin_url(), autocommit=True) as admin:
                while not self.stop_flag.wait(SAMPLE_SECONDS):
                    self._sample(server, admin)
        except BaseException as error:  # seen by the round, which raises it
            self.error = error

    def _sample(self, server: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
        row = server.execute(
            "SELECT count(*) FILTER (WHERE datname = %s AND application_name <> %s), count(*)"
            " FROM pg_stat_activity WHERE backend_type = 'client backend'", (DB_NAME, MONITOR_APP)).fetchone()
        assert row is not None
        servers = clients = waiting = 0
        for pool in admin_show(admin, "SHOW POOLS"):
            if pool["database"] == DB_NAME:
                servers += sum(int(pool[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
                waiting += int(pool["cl_waiting"])
                clients += int(pool["cl_active"]) + int(pool["cl_waiting"])
        p = self.peaks
        p.database, p.cluster = max(p.database, row[0]), max(p.cluster, row[1])
        p.pooler_servers = max(p.pooler_servers, servers)
        p.pooler_clients_waiting = max(p.pooler_clients_waiting, waiting)
        p.pooler_clients = max(p.pooler_clients, clients)
        p.samples += 1


POOLER_TOTALS = ("total_xact_count", "total_query_count", "total_xact_time", "total_wait_time")


def pooler_totals(bouncer: PgBouncer) -> dict[str, int]:
    """PgBouncer's running totals for the bench's database (times in microseconds)."""
    row = next((r for r in bouncer.show("SHOW STATS") if r["database"] == DB_NAME), None)
    return {k: int(row[k]) if row else 0 for k in POOLER_TOTALS}


def pooler_use(before: dict[str, int], after: dict[str, int], jobs: int, seconds: float) -> dict[str, float]:
    """What a job cost the pool: its transactions, the server-connection time they held, the clients' wait."""
    xacts = after["total_xact_count"] - before["total_xact_count"]
    queries = after["total_query_count"] - before["total_query_count"]
    held_us = after["total_xact_time"] - before["total_xact_time"]
    wait_us = after["total_wait_time"] - before["total_wait_time"]
    return {"xacts_per_job": xacts / jobs, "xacts_per_s": xacts / seconds,
            "queries_per_xact": queries / xacts if xacts else float("nan"),
            "server_ms_per_job": held_us / 1000 / jobs,
            "avg_xact_ms": held_us / 1000 / xacts if xacts else float("nan"),
            "client_wait_ms_per_job": wait_us / 1000 / jobs}


# ---- jobs -----------------------------------------------------------------------------------


def _create(conn: psycopg.Connection[Any], user: str) -> str:
    from psycopg.types.json import Jsonb

    from supervisor.queue.queries import query

    row = conn.execute(query("create_job"), {
        "user_id": user, "export_type": "pdf", "payload": Jsonb({"source": {"kind": "html", "html": "<p>fleet</p>"}}),
        "menu_id": None, "subscriber": True, "idempotency_key": None, "recipient": "fleet@example.com",
        "webhook_url": None}).fetchone()
    assert row is not None
    return str(row[0])


def enqueue_burst(pooled_url: str, jobs: int) -> list[str]:
    """All jobs in one transaction through the pooler: they become visible at once."""
    users = [str(uuid.uuid4()) for _ in range(8)]
    with psycopg.connect(pooled_url, prepare_threshold=None) as conn, conn.transaction():
        return [_create(conn, users[i % 8]) for i in range(jobs)]


def enqueue_paced(pooled_url: str, jobs: int, per_s: float) -> list[str]:
    """One job per transaction through the pooler, at a steady rate (the web app's traffic)."""
    user = str(uuid.uuid4())
    ids = []
    with psycopg.connect(pooled_url, prepare_threshold=None, autocommit=True) as conn:
        start = time.monotonic()
        for i in range(jobs):
            time.sleep(max(0.0, start + i / per_s - time.monotonic()))
            ids.append(_create(conn, user))
    return ids


def enqueue_one_at_a_time(pooled_url: str, direct_url: str, jobs: int) -> list[str]:
    """Each job created once the previous one has started, and a pause after: an idle fleet's pickup."""
    user = str(uuid.uuid4())
    ids = []
    with psycopg.connect(pooled_url, prepare_threshold=None, autocommit=True) as conn, \
            psycopg.connect(direct_url, autocommit=True, application_name=MONITOR_APP) as watch:
        for _ in range(jobs):
            ids.append(_create(conn, user))
            deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
            while time.monotonic() < deadline and watch.execute(
                    "SELECT started_at IS NULL FROM export_jobs WHERE id = %s", (ids[-1],)).fetchone() == (True,):
                time.sleep(0.005)
            time.sleep(IDLE_PAUSE_SECONDS)  # the worker finishes it and the fleet is idle again
    return ids


def drain(direct_url: str, ids: list[str]) -> None:
    """Until every job is final and every mail row sent (or the timeout)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    with psycopg.connect(direct_url, autocommit=True, application_name=MONITOR_APP) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM export_jobs WHERE id = ANY(%(ids)s::uuid[])"
                "        AND status IN ('pending', 'processing')),"
                "       (SELECT count(*) FROM export_mail_outbox WHERE job_id = ANY(%(ids)s::uuid[])"
                "        AND sent_at IS NULL AND gave_up_at IS NULL)", {"ids": ids}).fetchone()
            assert row is not None
            if row == (0, 0):
                return
            time.sleep(0.1)


def verify(direct_url: str, ids: list[str], workers: list[Worker]) -> dict[str, Any]:
    """Each job completed exactly once: one attempt, one mail row sent, one mail file in the fleet."""
    with psycopg.connect(direct_url, autocommit=True, application_name=MONITOR_APP) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed'),"
            "       count(*) FILTER (WHERE status = 'completed' AND attempts = 1),"
            "       count(*) FILTER (WHERE attempts > 1),"
            "       extract(epoch FROM max(completed_at) - min(started_at))::float8,"
            "       extract(epoch FROM max(created_at) - min(created_at))::float8"
            " FROM export_jobs WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()
        assert row is not None
        completed, first_attempt, retried, wall, creating = row
        latencies = [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM started_at - created_at)::float8 FROM export_jobs"
            " WHERE id = ANY(%s::uuid[]) AND started_at IS NOT NULL", (ids,)).fetchall()]
        mail_rows, mail_sent = conn.execute(
            "SELECT count(*), count(sent_at) FROM export_mail_outbox WHERE job_id = ANY(%s::uuid[])",
            (ids,)).fetchone() or (0, 0)
    wanted = set(ids)
    files: dict[str, int] = {}
    for worker in workers:
        for path in (worker.data_dir / "mail").glob("*-completed.eml"):
            job = path.name.removesuffix("-completed.eml")
            if job in wanted:
                files[job] = files.get(job, 0) + 1
    lost = len(ids) - completed
    doubled = retried + sum(n - 1 for n in files.values()) + max(0, mail_rows - len(ids))
    return {
        "jobs": len(ids), "completed": completed, "first_attempt": first_attempt, "retried": retried,
        "mail_rows": mail_rows, "mail_sent": mail_sent, "mail_files": sum(files.values()),
        "jobs_without_mail_file": len(wanted - set(files)), "lost": lost, "doubled": doubled,
        "wall_s": wall, "per_s": completed / wall if wall else 0.0,
        "created_per_s": len(ids) / creating if creating else float("inf"),
        "pickup_p50_ms": pct(latencies, 50) * 1000, "pickup_p95_ms": pct(latencies, 95) * 1000,
        "pickup_max_ms": max(latencies) * 1000 if latencies else float("nan"),
    }


# ---- a fleet, its rounds ----------------------------------------------------------------------


@dataclass
class Round:
    listen: str
    kind: str  # a RoundKind's value (the JSON's)
    result: dict[str, Any]
    peaks: Peaks
    load_before: list[float]
    notes: list[str] = field(default_factory=list)


def one_round(kind: RoundKind, listen: Listen, monitor: Monitor, workers: list[Worker], direct_url: str,
              pooled_url: str, cfg: FleetConfig) -> Round:
    before = load()
    monitor.reset()
    totals, t0 = pooler_totals(monitor.bouncer), time.monotonic()
    if kind is RoundKind.BURST:
        ids = enqueue_burst(pooled_url, cfg.jobs)
    elif kind is RoundKind.PACED:
        ids = enqueue_paced(pooled_url, cfg.paced_jobs, cfg.paced_per_s)
    else:
        ids = enqueue_one_at_a_time(pooled_url, direct_url, cfg.idle_jobs)
    drain(direct_url, ids)
    result = verify(direct_url, ids, workers)
    result["pooler"] = pooler_use(totals, pooler_totals(monitor.bouncer), len(ids), time.monotonic() - t0)
    if monitor.error is not None:
        raise RuntimeError(f"the connection monitor failed: {monitor.error}")
    peaks = monitor.reset()
    print(f"  {listen.value}, {kind.value}: {result['completed']}/{result['jobs']} completed, "
          f"{result['per_s']:.0f} jobs/s, pickup p50 {result['pickup_p50_ms']:.0f} ms, "
          f"peak {peaks.database} server connections (load {before[0]})", file=sys.stderr, flush=True)
    return Round(listen.value, kind.value, result, peaks, before)


def run_fleet(cfg: FleetConfig, listen: Listen, server: PgServer, bouncer: PgBouncer) -> list[Round]:
    direct_url = server.url(DB_NAME)
    pooled_url = bouncer.url(DB_NAME)
    with tempfile.TemporaryDirectory(prefix="ew-fleet-") as tmp:
        print(f"fleet: {cfg.workers} workers through the pooler, {listen.value}", file=sys.stderr, flush=True)
        monitor = Monitor(direct_url, bouncer)
        monitor.start()
        workers = start_workers(cfg, Path(tmp), pooled_url, direct_url if listen is Listen.DIRECT else None)
        try:
            t0, start_load = time.monotonic(), load()
            wait_healthy(workers)
            started = time.monotonic() - t0
            print(f"  all {cfg.workers} healthy after {started:.0f} s", file=sys.stderr, flush=True)
            idle = monitor.reset()
            rounds = [one_round(kind, listen, monitor, workers, direct_url, pooled_url, cfg)
                      for kind in RoundKind]
            rounds[0].notes.append(f"{listen.value}: all {cfg.workers} workers healthy {started:.0f} s after "
                                   f"their start (load {start_load[0]:.1f}); {idle.database} server "
                                   "connections while they were idle")
        except BaseException:
            stop_workers(workers)
            monitor.stop_flag.set()
            raise
        codes = stop_workers(workers)
        monitor.stop_flag.set()
        monitor.join()
        bad = [(w.index, c) for w, c in zip(workers, codes, strict=True) if c != 0]
        if bad:
            rounds[-1].notes.append(f"workers that did not exit 0 on SIGTERM (index, code): {bad}")
    return rounds


def migrate_database(server: PgServer) -> None:
    from shared.config import load_settings
    from supervisor.queue.migrate import migrate, sync_queue_settings

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = server.url(DB_NAME)
    migrate(url)
    environ = {"DATABASE_URL": url, "FREE_USER_HOURLY_LIMIT": HIGH, "SUBSCRIBER_HOURLY_LIMIT": HIGH,
               "FREE_USER_PENDING_LIMIT": HIGH, "SUBSCRIBER_PENDING_LIMIT": HIGH}
    sync_queue_settings(url, load_settings(environ=environ))


def run(cfg: FleetConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"config": {**asdict(cfg), "pool_mode": cfg.pool_mode.value}, "rounds": [], "notes": []}
    out["notes"] += [f"pgbouncer.ini departs from Supabase's: {k} = {v}" for k, v in cfg.bouncer_settings]
    with PgServer(max_connections=cfg.max_connections) as server:
        migrate_database(server)
        # stats_period: SHOW STATS's totals every second rather than every minute (the clients see no change).
        with PgBouncer(upstream_port=server.port, pool_mode=cfg.pool_mode, default_pool_size=cfg.pool_size,
                       extra_settings={"stats_period": "1", **dict(cfg.bouncer_settings)}) as bouncer:
            out["pgbouncer"] = subprocess.run([pgbouncer_binary(), "--version"], capture_output=True, text=True,
                                              check=False).stdout.splitlines()[:1]
            for listen in Listen:
                out["rounds"] += [asdict(r) for r in run_fleet(cfg, listen, server, bouncer)]
    return out


def table(res: dict[str, Any]) -> str:
    """The rounds as Markdown: throughput, pickup, connections, exactly-once; then the pool's use."""
    cfg = res["config"]
    lines = [
        f"{cfg['workers']} workers x {cfg['renders_per_worker']} null children, one PgBouncer "
        f"({cfg['pool_mode']} mode, pool {cfg['pool_size']}), PostgreSQL max_connections = {cfg['max_connections']}",
        "",
        "| LISTEN | round | jobs | completed | jobs/s | created/s | pickup p50 | pickup p95 | "
        "peak server conns (db) | peak on server (all) | lost | doubled | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rounds"]:
        x, p = r["result"], r["peaks"]
        created = {RoundKind.BURST.value: "at once", RoundKind.IDLE.value: "one at a time"}.get(
            r["kind"], f"{x['created_per_s']:.0f}")
        lines.append(
            f"| {r['listen']} | {r['kind']} | {x['jobs']} | {x['completed']} | {x['per_s']:.0f} | {created} | "
            f"{x['pickup_p50_ms']:.0f} ms | {x['pickup_p95_ms']:.0f} ms | {p['database']} | {p['cluster']} | "
            f"{x['lost']} | {x['doubled']} | {r['load_before'][0]:.1f} |")
    lines += [
        "",
        "| LISTEN | round | pooler clients (peak) | pooler server conns (peak) | clients waiting (peak) | "
        "transactions/job | transactions/s | queries/transaction | server-connection ms/job | "
        "avg transaction ms | client wait ms/job | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rounds"]:
        u, p = r["result"]["pooler"], r["peaks"]
        lines.append(
            f"| {r['listen']} | {r['kind']} | {p['pooler_clients']} | {p['pooler_servers']} | "
            f"{p['pooler_clients_waiting']} | {u['xacts_per_job']:.1f} | {u['xacts_per_s']:.0f} | "
            f"{u['queries_per_xact']:.1f} | {u['server_ms_per_job']:.1f} | {u['avg_xact_ms']:.2f} | "
            f"{u['client_wait_ms_per_job']:.1f} | {r['load_before'][0]:.1f} |")
    notes = [*res.get("notes", []), *(n for r in res["rounds"] for n in r["notes"])]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


SMOKE = FleetConfig(workers=2, pool_size=5, jobs=20, paced_jobs=10, idle_jobs=3)


def report(cfg: FleetConfig, out: Path) -> int:
    res = run(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
    print(table(res))
    return 0


def run_fleet_command(*, smoke: bool, jobs: int | None, out: Path) -> int:
    """`export-worker bench fleet [--smoke] [--jobs N]`."""
    cfg = SMOKE if smoke else FleetConfig()
    if jobs is not None:
        cfg = replace(cfg, jobs=jobs)
    return report(cfg, out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        return worker_main()
    defaults = FleetConfig()
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--workers", type=int, default=defaults.workers)
    ap.add_argument("--pool-size", type=int, default=defaults.pool_size)
    ap.add_argument("--pool-mode", choices=[m.value for m in PoolMode], default=defaults.pool_mode.value)
    ap.add_argument("--max-connections", type=int, default=defaults.max_connections)
    ap.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs in the burst round")
    ap.add_argument("--paced-jobs", type=int, default=defaults.paced_jobs)
    ap.add_argument("--paced-per-s", type=float, default=defaults.paced_per_s)
    ap.add_argument("--idle-jobs", type=int, default=defaults.idle_jobs, help="jobs in the idle round")
    ap.add_argument("--bouncer-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a pgbouncer.ini setting that departs from Supabase's (reported with the table)")
    ap.add_argument("--out", default="bench/results/fleet.json")
    ns = ap.parse_args(args)
    for item in ns.bouncer_setting:
        if "=" not in item:
            ap.error(f"--bouncer-setting {item!r}: expected KEY=VALUE")
    cfg = FleetConfig(workers=ns.workers, pool_size=ns.pool_size, pool_mode=PoolMode(ns.pool_mode),
                      max_connections=ns.max_connections, jobs=ns.jobs, paced_jobs=ns.paced_jobs,
                      paced_per_s=ns.paced_per_s, idle_jobs=ns.idle_jobs,
                      bouncer_settings=tuple((k, v) for k, _, v in (i.partition("=") for i in ns.bouncer_setting)))
    return report(cfg, Path(ns.out))


if __name__ == "__main__":
    sys.exit(main())
