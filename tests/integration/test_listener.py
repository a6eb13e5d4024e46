"""LISTEN/NOTIFY: wake-ups, status streams, reconnection after the connection is killed.

(With LISTEN off the supervisor polls; that is covered by the supervisor's own tests.)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supervisor.queue.jobs import JobQueue
from supervisor.queue.listener import Listener
from tests.conftest import html_payload, make_settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def listener(db_url: str) -> AsyncIterator[Listener]:
    lst = Listener(db_url, make_settings(Path("."), db_url), reconnect_delay=0.1)
    task = asyncio.create_task(lst.run())
    await asyncio.wait_for(lst.connected.wait(), 10)
    try:
        yield lst
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _next(q: asyncio.Queue[dict[str, Any]], timeout: float = 5) -> dict[str, Any]:
    return await asyncio.wait_for(q.get(), timeout)


async def test_new_job_wakes_the_claimer_at_once(listener: Listener, queue: JobQueue) -> None:
    listener.job_available.clear()
    # The listener never polls: the event can only come from the NOTIFY the insert sent.
    await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    await asyncio.wait_for(listener.job_available.wait(), 60)


async def test_status_changes_are_published(listener: Listener, queue: JobQueue) -> None:
    sub = listener.subscribe()
    user = str(uuid.uuid4())
    job = await queue.create_job(user_id=user, export_type="pdf", payload=html_payload())
    job_id = str(job["id"])
    first = await _next(sub)
    assert (first["id"], first["user_id"], first["status"]) == (job_id, user, "pending")
    [claim] = await queue.claim(1)
    msg = await _next(sub)
    assert (msg["id"], msg["status"], msg["attempts"]) == (job_id, "processing", 1)
    await queue.heartbeat([claim])  # no status change: no message
    await queue.cancel(job_id)
    msg = await _next(sub)
    assert (msg["status"], msg["cancel_requested"]) == ("processing", True)
    await queue.settle_cancelled(claim)
    msg = await _next(sub)
    assert (msg["id"], msg["user_id"], msg["status"]) == (job_id, user, "cancelled")
    assert sub.empty()
    # A second job through completion.
    job2 = await queue.create_job(user_id=user, export_type="image", payload=html_payload())
    [claim2] = await queue.claim(1)
    await queue.complete(
        claim2, storage_path="p", file_url="u", file_size_bytes=1, content_type="image/png", metadata={}
    )
    statuses = [(await _next(sub))["status"] for _ in range(3)]
    assert statuses == ["pending", "processing", "completed"]
    listener.unsubscribe(sub)
    assert str(job2["id"])


async def test_reconnects_after_the_connection_is_killed(
    listener: Listener, queue: JobQueue, db_url: str
) -> None:
    sub = listener.subscribe()
    old_pid = listener.backend_pid
    assert old_pid is not None and listener.reconnects == 0
    listener.connected.clear()
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,)).fetchone() == (True,)
    await asyncio.wait_for(listener.connected.wait(), 10)
    assert listener.reconnects == 1
    assert listener.backend_pid != old_pid
    listener.job_available.clear()
    user = str(uuid.uuid4())
    await queue.create_job(user_id=user, export_type="pdf", payload=html_payload())
    await asyncio.wait_for(listener.job_available.wait(), 5)
    msg = await _next(sub)
    assert (msg["user_id"], msg["status"]) == (user, "pending")
