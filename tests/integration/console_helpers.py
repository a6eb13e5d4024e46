"""Jobs in given states for the console's tests, written the way the worker leaves them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from supervisor.delivery.links import LinkSigner

OPERATOR = "alice"
OPERATOR_KEY = "alice-console-key-0123456789"
CONSOLE_KEYS = f"{OPERATOR}:{OPERATOR_KEY}"
SECRET_HTML = "<h1>TOP-SECRET-MENU-CONTENT</h1>"


def insert_job(
    conn: psycopg.Connection[Any],
    *,
    status: str = "pending",
    user_id: str | None = None,
    export_type: str = "pdf",
    priority: int = 10,
    html: str = SECRET_HTML,
    notify_email: str | None = None,
    error_category: str | None = None,
    error_message: str | None = None,
    attempts: int = 0,
    created_ago: timedelta = timedelta(minutes=5),
    available_in: timedelta = timedelta(0),
    metadata: dict[str, Any] | None = None,
) -> str:
    """One job row; a failed one gets an error_history entry per attempt, as fail_job writes them."""
    now = datetime.now(UTC)
    history = [
        {"attempt": n, "at": (now - created_ago + timedelta(seconds=10 * n)).isoformat(), "worker_id": "worker-a",
         "category": error_category or "transient", "message": error_message or "render child died"}
        for n in range(1, attempts + 1)
    ] if status == "failed" else []
    final = status in ("completed", "failed", "cancelled")
    row = conn.execute(
        """INSERT INTO export_jobs (user_id, export_type, status, priority, attempts, max_attempts, created_at,
                                    available_at, started_at, completed_at, error_message, error_category,
                                    payload, metadata, notify_email, error_history, worker_id, heartbeat_at,
                                    subscriber, claim_order)
           VALUES (%(user_id)s, %(export_type)s, %(status)s, %(priority)s, %(attempts)s, greatest(%(attempts)s, 3),
                   %(created)s, %(available)s, %(started)s, %(completed)s, %(error_message)s, %(error_category)s,
                   %(payload)s, %(metadata)s, %(email)s, %(history)s,
                   CASE WHEN %(status)s = 'processing' THEN 'worker-a' END,
                   CASE WHEN %(status)s = 'processing' THEN now() END, %(priority)s >= 100, 0)
           RETURNING id""",
        {
            "user_id": user_id or str(uuid.uuid4()),
            "export_type": export_type,
            "status": status,
            "priority": priority,
            "attempts": attempts,
            "created": now - created_ago,
            "available": now + available_in,
            "started": now - created_ago + timedelta(seconds=1) if status != "pending" else None,
            "completed": now - created_ago + timedelta(seconds=30) if final else None,
            "error_message": error_message,
            "error_category": error_category,
            "payload": json.dumps({"source": {"kind": "html", "html": html}, "email": notify_email}
                                  if notify_email else {"source": {"kind": "html", "html": html}}),
            "metadata": json.dumps(metadata or {}),
            "email": notify_email,
            "history": json.dumps(history),
        },
    ).fetchone()
    assert row is not None
    return str(row[0])


def job_status(conn: psycopg.Connection[Any], job_id: str) -> str:
    row = conn.execute("SELECT status FROM export_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def audit_rows(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, str, int]]:
    return [
        (r[0], r[1], r[2], r[3], r[4])
        for r in conn.execute("SELECT actor, action, target, outcome, affected FROM export_console_audit ORDER BY id")
    ]


@dataclass(frozen=True)
class AgedFile:
    job_id: str
    path: str  # storage_path
    stored_link: str  # the file_url written at completion, expired by now
    stored_expiry: int


def insert_file_job_completed_days_ago(db_url: str, signer: LinkSigner, base_url: str, ttl_seconds: int,
                                       days: int = 8) -> AgedFile:
    """A completed job whose 30-day file was stored `days` ago, with the link its completion wrote then."""
    path = f"{uuid.uuid4()}/{uuid.uuid4()}/1.pdf"
    completed_at = datetime.now(UTC) - timedelta(days=days)
    expiry = int(completed_at.timestamp()) + ttl_seconds
    stored = f"{base_url}/files/{path}?expires={expiry}&sig={signer.sign(path, expiry)}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        job = insert_job(conn, status="completed", created_ago=timedelta(days=days, seconds=30))
        conn.execute("UPDATE export_jobs SET completed_at = %s, storage_path = %s, file_url = %s, "
                     "file_size_bytes = 18, content_type = 'application/pdf' WHERE id = %s",
                     (completed_at, path, stored, job))
    return AgedFile(job, path, stored, expiry)
