"""Wake-up: NOTIFY wakes an idle supervisor at once; with LISTEN off, polling alone works.

The null child (no Chromium) keeps these about the queue and the claim loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import html_payload, make_settings

from render_child.null_child import null_child_entry
from supervisor.runner import Supervisor

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def idle_supervisor(tmp_path: Path, db_url: str) -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Supervisor, asyncio.Task[int]]] = []

    async def start(**env: str) -> Supervisor:
        settings = make_settings(tmp_path, db_url, MAX_CONCURRENT_RENDERS="1", **env)
        sup = Supervisor(settings, db_url, child_target=null_child_entry, serve_http=False)
        task = asyncio.create_task(sup.run())
        running.append((sup, task))
        await asyncio.wait_for(sup.started.wait(), 30)
        deadline = time.monotonic() + 30
        while not sup.parts.pool.idle_children():
            assert time.monotonic() < deadline, "no idle child"
            await asyncio.sleep(0.02)
        if sup.parts.listener is not None:
            await asyncio.wait_for(sup.parts.listener.connected.wait(), 10)
        # Let the claim loop find the queue empty and go to sleep for the idle interval.
        await asyncio.sleep(0.3)
        return sup

    yield start
    for sup, task in running:
        sup.request_stop(fast=True)
        with contextlib.suppress(Exception):
            assert await asyncio.wait_for(task, 30) == 0


async def claimed(sup: Supervisor, timeout: float) -> bool:
    """Create a job; whether the worker claims it within ``timeout`` seconds."""
    job = await sup.parts.queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await sup.parts.queue.get_job(str(job["id"]))
        assert row is not None
        if row["status"] != "pending":
            return True
        await asyncio.sleep(0.02)
    return False


async def test_notify_wakes_an_idle_worker_long_before_the_poll_interval(idle_supervisor: Any) -> None:
    # Polls 10 minutes apart: a claim within the generous 60 s can only be the NOTIFY's doing.
    sup = await idle_supervisor(POLLING_INTERVAL_IDLE_MS="600000", POLLING_INTERVAL_BUSY_MS="600000")
    assert await claimed(sup, timeout=60), "not claimed within 60 s; the idle poll is 10 minutes"


async def test_with_listen_off_polling_alone_claims_jobs(idle_supervisor: Any) -> None:
    sup = await idle_supervisor(LISTEN_NOTIFY="false", POLLING_INTERVAL_IDLE_MS="300", POLLING_INTERVAL_BUSY_MS="100")
    assert sup.parts.listener is None
    assert await claimed(sup, timeout=60), "not claimed within 60 s with a 300 ms idle poll and no LISTEN"
    # And it keeps working, job after job.
    for _ in range(3):
        assert await claimed(sup, timeout=60)
