"""GET /metrics of a real `export-worker serve`, after real jobs, passes `promtool check metrics`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import free_port, http_get, requires_chromium, running_serve, serve_env

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)
SEED_METRICS = {
    "export_jobs_created_total": "counter",
    "export_jobs_completed_total": "counter",
    "export_jobs_failed_total": "counter",
    "export_job_duration_seconds": "histogram",
    "export_queue_depth": "gauge",
    "export_active_renders": "gauge",
}

if PROMTOOL is None:  # pragma: no cover
    pytestmark.append(pytest.mark.skip(reason="promtool is not installed (apt-get install prometheus)"))


def test_metrics_pass_promtool_after_real_jobs(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = serve_env(db_url, tmp_path / "data", port)
    log = tmp_path / "serve.log"
    with running_serve(env, log) as proc:
        # Two jobs that complete and one that fails for good (a URL off the empty allowlist),
        # so the labelled counters and the histogram have samples.
        payloads = [
            ("pdf", {"source": {"kind": "html", "html": "<h1>metrics one</h1>"}}),
            ("image", {"source": {"kind": "html", "html": "<h1>metrics two</h1>"}}),
            ("pdf", {"source": {"kind": "url", "url": "http://not-allowed.example/"}}),
        ]
        job_ids = []
        with psycopg.connect(db_url, autocommit=True) as conn:
            for export_type, payload in payloads:
                row = conn.execute(
                    "SELECT id::text FROM create_export_job(%s::uuid, %s, %s::jsonb)",
                    (str(uuid.uuid4()), export_type, json.dumps(payload)),
                ).fetchone()
                assert row is not None
                job_ids.append(row[0])

        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()[-3000:]}"
            with psycopg.connect(db_url) as conn:
                rows: dict[str, str] = {
                    job_id: status
                    for job_id, status in conn.execute(
                        "SELECT id::text, status FROM export_jobs WHERE id = ANY(%s::uuid[])", (job_ids,)
                    )
                }
            if all(rows.get(j) in ("completed", "failed") for j in job_ids):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        assert [rows[j] for j in job_ids] == ["completed", "completed", "failed"], rows

        # The counters are bumped right after the row is settled: poll the scrape, not a sleep.
        deadline = time.monotonic() + 10
        while True:
            status, content_type, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200, body[:500]
            text = body.decode()
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            completed = sum(v for (name, _), v in samples.items() if name == "export_jobs_completed_total")
            failed = sum(v for (name, _), v in samples.items() if name == "export_jobs_failed_total")
            if completed >= 2 and failed >= 1:
                break
            assert time.monotonic() < deadline, text[:3000]
            time.sleep(0.1)
        assert content_type.startswith("text/plain"), content_type

        check = subprocess.run([str(PROMTOOL), "check", "metrics"], input=body, capture_output=True, timeout=300)
        report = (check.stdout + check.stderr).decode()
        assert check.returncode == 0 and not report.strip(), report

        types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
        helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
        for name, kind in SEED_METRICS.items():
            assert types.get(name) == kind, (name, types.get(name))
            assert name in helps, name
        assert samples[("export_jobs_completed_total", (("export_type", "pdf"),))] == 1
        assert samples[("export_jobs_completed_total", (("export_type", "image"),))] == 1
        assert samples[("export_jobs_failed_total", (("error_category", "permanent"), ("export_type", "pdf")))] == 1
        assert samples[("export_job_duration_seconds_count", (("export_type", "pdf"),))] == 1
        assert ("export_queue_depth", ()) in samples and ("export_active_renders", ()) in samples
        # The pool's own: child memory, kills and recycles by reason, breaker state.
        for name in (
            "export_child_memory_bytes",
            "export_child_kills_total",
            "export_child_recycles_total",
            "export_storage_breaker_state",
        ):
            assert name in types, name

        # Leaving the block sends SIGTERM and asserts exit code 0.
