"""Jobs in given states for the console's tests, written the way the worker leaves them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

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
