"""What the three latency histograms see on a real `serve`: the distributions their buckets were chosen from.

A burst of jobs (small and large menus as PDF, a small menu as an image, plain
HTML) goes to one `export-worker serve` with two children. Printed:

- job duration (claim to completion) and pickup latency (creation to claim), raw,
  from the database's timestamps and the "job completed" log lines: percentiles;
- the three histograms as `/metrics` exposes them: the count in each bucket (not
  cumulative), so a bucket that swallows most observations shows at once.

    .venv/bin/python -m bench.buckets --jobs 60

PostgreSQL at 127.0.0.1:5432 (BENCH_ADMIN_URL overrides); the database
`ew_buckets_<pid>` is created and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.docs import documents

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
HISTOGRAMS = ("export_job_duration_seconds", "export_pickup_latency_seconds", "export_claim_to_start_seconds")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _payloads() -> list[tuple[str, str, dict[str, Any]]]:
    docs = documents(image_port=9)  # small and large have no images
    html = {"source": {"kind": "html", "html": "<h1>Bucket bench</h1>" + "<p>line of text</p>" * 200}}
    return [("small menu pdf", "pdf", docs["small"]), ("large menu pdf", "pdf", docs["large"]),
            ("small menu image", "image", docs["small"]), ("html pdf", "pdf", html)]


def _percentiles(values: list[float]) -> str:
    if not values:
        return "no values"
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return (f"n={len(values)} min={min(values):.3f} p10={qs[9]:.3f} p50={qs[49]:.3f} p90={qs[89]:.3f} "
            f"p99={qs[98]:.3f} max={max(values):.3f}")


def _bucket_table(metrics_text: str) -> list[str]:
    lines = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in HISTOGRAMS:
            continue
        cumulative: dict[float, float] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                cumulative[le] = cumulative.get(le, 0) + sample.value
        lines.append(f"{family.name}: observations per bucket (upper bound: count)")
        previous = 0.0
        cells = []
        for le in sorted(cumulative):
            cells.append(f"{le:g}: {int(cumulative[le] - previous)}")
            previous = cumulative[le]
        lines.append("  " + ", ".join(cells))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=60)
    args = parser.parse_args()
    name = f"ew_buckets_{os.getpid()}"
    base = ADMIN_URL.rpartition("/")[0]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    port = _port()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if k not in ("SUPABASE_URL", "SENDGRID_API_KEY", "SMTP_HOST")}
            env |= {"DATABASE_URL": url, "PORT": str(port), "EXPORT_WORKER_DATA_DIR": tmp,
                    "MAX_CONCURRENT_RENDERS": "2", "FREE_USER_PENDING_LIMIT": "10000", "LOG_LEVEL": "info"}
            log_path = Path(tmp) / "serve.log"
            with open(log_path, "w") as log:
                proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "export-worker"), "serve"], cwd=ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
            try:
                return _run(args.jobs, url, port, proc, log_path)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(jobs: int, url: str, port: int, proc: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            return 1
        time.sleep(0.2)
    kinds = _payloads()
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [str(conn.execute("SELECT id FROM create_export_job(%s::uuid, %s, %s::jsonb, p_subscriber => true)",
                                (str(uuid.uuid4()), kinds[i % len(kinds)][1],
                                 json.dumps(kinds[i % len(kinds)][2]))).fetchone()[0])  # type: ignore[index]
               for i in range(jobs)]
    started = time.monotonic()
    while True:
        with psycopg.connect(url) as conn:
            left = conn.execute("SELECT count(*) FROM export_jobs WHERE id = ANY(%s::uuid[]) "
                                "AND status NOT IN ('completed', 'failed')", (ids,)).fetchone()[0]  # type: ignore[index]
        if left == 0:
            break
        if time.monotonic() - started > 30 * 60:
            print("jobs did not finish in 30 minutes", file=sys.stderr)
            return 1
        time.sleep(0.5)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status, extract(epoch FROM started_at - created_at) FROM export_jobs "
                            "WHERE id = ANY(%s::uuid[])", (ids,)).fetchall()
    durations = [json.loads(line)["duration_ms"] / 1000 for line in log_path.read_text().splitlines()
                 if '"job completed"' in line]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        metrics_text = resp.read().decode()
    print(f"{jobs} jobs ({', '.join(k for k, _, _ in kinds)}, in turn), 2 children; "
          f"{sum(1 for r in rows if r[0] == 'completed')} completed")
    print(f"job duration, claim to completion (s, log lines): {_percentiles(durations)}")
    print(f"pickup, creation to the last claim (s, database): {_percentiles([float(r[1]) for r in rows if r[1]])}")
    for line in _bucket_table(metrics_text):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
