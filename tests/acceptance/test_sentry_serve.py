"""`serve` with SENTRY_DSN: a render child killed mid-render reaches Sentry (the fake ingest endpoint) with its job's
tags; a job that fails for the document's own fault sends nothing; no secret or address leaves the worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import psycopg
import pytest
from serving import free_port, http_get, requires_chromium, running_serve, serve_env, until

from tests.fakes.sentry_relay import SentryRelay

pytestmark = [pytest.mark.timeout(180), pytest.mark.chromium, requires_chromium]

EMAIL = "owner.of.the.menu@example.com"


class _Hanging(BaseHTTPRequestHandler):
    """Holds every request until the test releases it: the render stays busy."""

    release = threading.Event()

    def do_GET(self) -> None:
        self.release.wait(120)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<h1>late</h1>")

    def log_message(self, format: str, *args: object) -> None:
        return


def create(db_url: str, export_type: str, source: dict[str, object]) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT id::text FROM create_export_job(%s::uuid, %s, %s::jsonb, p_email => %s, "
                           "p_subscriber => true)",
                           (str(uuid.uuid4()), export_type, json.dumps({"source": source}), EMAIL)).fetchone()
    assert row is not None
    return str(row[0])


def status(db_url: str, job_id: str) -> str:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT status FROM export_jobs WHERE id = %s", (job_id,)).fetchone()
    return str(row[0]) if row else ""


def test_a_child_killed_mid_render_is_reported_and_a_bad_document_is_not(db_url: str, tmp_path: Path) -> None:
    hanging = ThreadingHTTPServer(("127.0.0.1", 0), _Hanging)
    threading.Thread(target=hanging.serve_forever, daemon=True).start()
    page_port = hanging.server_address[1]
    port = free_port()
    with SentryRelay() as relay:
        env = serve_env(db_url, tmp_path / "data", port, SENTRY_DSN=relay.dsn, WORKER_ID="sentry-worker",
                        ALLOWED_URL_HOSTS="127.0.0.1", TRUSTED_PRIVATE_HOSTS=f"127.0.0.1:{page_port}",
                        LINK_SECRET="link-secret-not-for-sentry")
        log = tmp_path / "serve.log"
        try:
            with running_serve(env, log) as proc:
                # The document's fault: a URL off the allowlist fails for good; nothing is sent.
                bad = create(db_url, "pdf", {"kind": "url", "url": "http://not-allowed.example/"})
                until(lambda: status(db_url, bad) == "failed", 60, "the bad job failed")
                # The worker's fault: the child dies (SIGKILL) while it renders.
                job = create(db_url, "image", {"kind": "url", "url": f"http://127.0.0.1:{page_port}/menu"})

                def busy_children() -> list[psutil.Process]:
                    _, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
                    if 'export_children{state="busy"} 1.0' not in body.decode():
                        return []
                    return [c for c in psutil.Process(proc.pid).children()
                            if c.is_running() and "spawn_main" in " ".join(c.cmdline())]

                for child in until(busy_children, 60, "the render child busy"):
                    os.kill(child.pid, signal.SIGKILL)
                events = until(lambda: [e for e in relay.events() if e.get("tags", {}).get("job_id") == job],
                               60, "the crash reported to Sentry")
        finally:
            _Hanging.release.set()
            hanging.shutdown()
        raw = relay.raw()
        all_events = relay.events()
    crash = events[0]
    assert crash["tags"]["worker_id"] == "sentry-worker"
    assert crash["tags"]["export_type"] == "image" and crash["tags"]["attempt"] == "1"
    assert crash["tags"]["failure_reason"] == "child_crashed"
    assert not [e for e in all_events if e.get("tags", {}).get("job_id") == bad], "the document's own failure was sent"
    for secret in (EMAIL, "link-secret-not-for-sentry", f"127.0.0.1:{page_port}/menu"):
        assert secret.encode() not in raw, secret
