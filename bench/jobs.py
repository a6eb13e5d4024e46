"""The one way the bench creates a job: `create_job` (supervisor/queries) with these parameters."""

from __future__ import annotations

from typing import Any


def create_job_params(user: str, payload: Any, recipient: str | None = None) -> dict[str, Any]:
    """A subscriber's PDF job: no menu, no idempotency key, no webhook. `payload` is a dict
    (wrapped in Jsonb here) or an already wrapped Jsonb, reused across many jobs."""
    from psycopg.types.json import Jsonb

    return {"user_id": user, "export_type": "pdf", "payload": payload if isinstance(payload, Jsonb) else Jsonb(payload),
            "menu_id": None, "subscriber": True, "idempotency_key": None, "recipient": recipient,
            "webhook_url": None}
