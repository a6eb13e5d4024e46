"""The one way the bench creates a job: `create_job` (supervisor/queries) with these parameters."""

from __future__ import annotations

from typing import Any

import psycopg


def create_job_params(user: str, payload: Any, recipient: str | None = None) -> dict[str, Any]:
    """A subscriber's PDF job: no menu, no idempotency key, no webhook. `payload` is a dict
    (wrapped in Jsonb here) or an already wrapped Jsonb, reused across many jobs."""
    from psycopg.types.json import Jsonb

    return {"user_id": user, "export_type": "pdf", "payload": payload if isinstance(payload, Jsonb) else Jsonb(payload),
            "menu_id": None, "subscriber": True, "idempotency_key": None, "recipient": recipient,
            "webhook_url": None}


def create_burst(conn: psycopg.Connection[Any], users: list[str], payload: dict[str, Any], jobs: int,
                 recipient: str | None = None) -> list[str]:
    """`jobs` jobs in one transaction, the users in turn: they become visible at once."""
    from psycopg.types.json import Jsonb

    from supervisor.queue.queries import query

    body = Jsonb(payload)
    ids = []
    with conn.transaction():
        for i in range(jobs):
            params = create_job_params(users[i % len(users)], body, recipient)
            row = conn.execute(query("create_job"), params).fetchone()
            assert row is not None
            ids.append(str(row[0]))
    return ids
