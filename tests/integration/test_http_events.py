"""Event-stream plumbing: per-job fan-out, the resync after a lost LISTEN connection, stream caps, JSON depth."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from supervisor.api_schemas import nesting_exceeds
from supervisor.events import StreamLimits
from supervisor.listener import Listener
from supervisor.problems import ApiProblem
from supervisor.queue import JobQueue
from tests.conftest import html_payload
from tests.integration.test_listener import listener  # noqa: F401 - the same running Listener fixture

pytestmark = pytest.mark.timeout(300)


async def test_a_watcher_gets_only_its_job(listener: Listener, queue: JobQueue) -> None:  # noqa: F811
    mine = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    updates = listener.watch(str(mine["id"]))
    other = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    await queue.cancel(str(other["id"]))
    await queue.cancel(str(mine["id"]))
    seen = [await asyncio.wait_for(updates.get(), 5)]
    while seen[-1]["status"] != "cancelled":  # its insert's NOTIFY may come first
        seen.append(await asyncio.wait_for(updates.get(), 5))
    assert {m["id"] for m in seen} == {str(mine["id"])}
    listener.unwatch(str(mine["id"]), updates)
    assert listener.watched == []


async def test_a_change_missed_while_deaf_is_delivered_after_reconnect(
    listener: Listener, queue: JobQueue, db_url: str  # noqa: F811
) -> None:
    job = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    job_id = str(job["id"])
    updates = listener.watch(job_id)
    reconnects = listener.reconnects
    with psycopg.connect(db_url, autocommit=True) as conn:
        # The change lands while the LISTEN connection is gone: its NOTIFY reaches nobody.
        conn.execute("SELECT pg_terminate_backend(%s)", (listener.backend_pid,))
        listener.connected.clear()
        conn.execute("UPDATE export_jobs SET status = 'cancelled', completed_at = now() WHERE id = %s", (job_id,))
    deadline = time.monotonic() + 10
    while listener.reconnects == reconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    seen = []
    while True:  # the live NOTIFY may also have arrived before the kill took effect; the last word counts
        message = await asyncio.wait_for(updates.get(), 10)
        seen.append(message["status"])
        if message["status"] == "cancelled":
            break
    assert seen[-1] == "cancelled"


def test_stream_caps_per_user_and_in_all() -> None:
    limits = StreamLimits(total=3, per_user=2)
    close_a1 = limits.open("a")
    limits.open("a")
    with pytest.raises(ApiProblem) as refused:
        limits.open("a")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"]
    limits.open("b")
    with pytest.raises(ApiProblem):
        limits.open("c")  # 3 in all
    close_a1()
    close_a1()  # closing twice counts once
    limits.open("c")
    assert limits.open_streams == 3


@pytest.mark.parametrize(
    ("raw", "deeper_than_3"),
    [
        (b'{"a": [1, {"b": 2}]}', False),
        (b'{"a": [[{"b": 2}]]}', True),
        (b'{"a": "[[[[[[[[[[["}', False),  # brackets inside strings do not count
        (b'{"a": "\\"[[[[["}', False),  # nor after an escaped quote
        (b"[" * 100_000, False),  # unbalanced: the decoder says so, not this check
        (b"[" * 100_000 + b"]" * 100_000, True),
    ],
)
def test_nesting_depth(raw: bytes, deeper_than_3: bool) -> None:
    assert nesting_exceeds(raw, 3) is deeper_than_3
