"""Several jobs in one child at once, through the real supervisor: a page that eats memory,
or a cancelled one, is stopped alone (its renderer process killed); the jobs beside it
in the same child render to the end, and the child stays.

The jobs beside it hold an image the local server answers only once the stopped job
is settled, so they are rendering, in the same child, while it is stopped.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest
from render_helpers import PNG_1PX_BYTES, LocalServer
from test_supervisor_pool import create, inflight_handle, start_supervisor, test_template, wait_for_status, wait_until

from supervisor.runner import Supervisor

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium]
__all__ = ["start_supervisor"]  # the fixture, shared with test_supervisor_pool


def _held_server(release: threading.Event) -> LocalServer:
    def held() -> tuple[int, dict[str, str], bytes]:
        release.wait(120)
        return 200, {"Content-Type": "image/png"}, PNG_1PX_BYTES

    return LocalServer(routes={"/held.png": held})


def _env(server: LocalServer, **env: str) -> dict[str, str]:
    return {"ALLOWED_HOSTS": server.netloc, "TRUSTED_PRIVATE_HOSTS": server.netloc, **env}


async def _in_one_child(sup: Supervisor, job_ids: list[str]) -> Any:
    handles = [await inflight_handle(sup, job_id, timeout=60) for job_id in job_ids]
    assert all(h is handles[0] for h in handles), [h.name for h in handles]
    return handles[0]


def _held_html(server: LocalServer, text: str) -> dict[str, Any]:
    return {"source": {"kind": "html", "html": f'<p>{text}</p><img src="{server.url("/held.png")}">'}}


async def test_a_page_eating_memory_is_stopped_alone_while_two_others_render(start_supervisor: Any) -> None:
    release = threading.Event()
    server = _held_server(release)
    try:
        run = await start_supervisor(wait_ready=1, **_env(
            server, MAX_CONCURRENT_RENDERS="3", SLOTS_PER_CHILD="3", CHILD_MEMORY_LIMIT_MB="1500",
            MAX_ATTEMPTS="1", JOB_TIMEOUT_SECONDS="120"))
        sup: Supervisor = run.sup
        eater = await create(sup.parts.queue, test_template("eat-memory"))
        others = [await create(sup.parts.queue, _held_html(server, f"beside {i}")) for i in range(2)]
        handle = await _in_one_child(sup, [eater, *others])
        pid = handle.pid
        row = await wait_for_status(sup.parts.queue, eater, {"failed", "completed"}, 60)
        assert row["status"] == "failed", row
        assert row["error_category"] == "resource" and row["metadata"]["failure_reason"] == "memory", row
        assert all(job in sup.parts.settler.inflight for job in others)  # still rendering, in the same child
        release.set()
        for job in others:
            done = await wait_for_status(sup.parts.queue, job, {"completed", "failed"}, 60)
            assert done["status"] == "completed" and done["attempts"] == 1, done
        assert handle in sup.parts.pool.handles and handle.pid == pid and handle.process.is_alive()
        assert sup.parts.pool.stats.kills == {"memory": 1}, sup.parts.pool.stats.kills
        assert sup.parts.pool.stats.deaths == {}, sup.parts.pool.stats.deaths
    finally:
        release.set()
        server.close()


async def _busy_beside_held(sup: Supervisor, server: Any) -> tuple[str, str, Any]:
    """A busy-loop job and a job held by `server`, in one child; once the busy page's
    renderer is named: (busy, other, the child's handle)."""
    busy = await create(sup.parts.queue, test_template("busy-loop"))
    other = await create(sup.parts.queue, _held_html(server, "beside"))
    handle = await _in_one_child(sup, [busy, other])
    await wait_until(lambda: busy in handle.assignments and handle.assignments[busy].renderer_pid > 0, 30,
                     "the busy page's renderer named by the child")
    return busy, other, handle


async def test_cancelling_one_job_stops_only_its_page(start_supervisor: Any) -> None:
    release = threading.Event()
    server = _held_server(release)
    try:
        run = await start_supervisor(wait_ready=1, **_env(
            server, MAX_CONCURRENT_RENDERS="2", SLOTS_PER_CHILD="2", MAX_ATTEMPTS="1", JOB_TIMEOUT_SECONDS="120"))
        sup: Supervisor = run.sup
        busy, other, handle = await _busy_beside_held(sup, server)
        assert await sup.parts.queue.cancel(busy) == "processing"
        row = await wait_for_status(sup.parts.queue, busy, {"cancelled", "failed", "completed"}, 30)
        assert row["status"] == "cancelled", row
        release.set()
        done = await wait_for_status(sup.parts.queue, other, {"completed", "failed"}, 60)
        assert done["status"] == "completed" and done["attempts"] == 1, done
        assert handle in sup.parts.pool.handles and handle.process.is_alive()
        assert sup.parts.pool.stats.deaths == {}, sup.parts.pool.stats.deaths
    finally:
        release.set()
        server.close()


async def test_a_busy_child_whose_browser_is_gone_is_settled_without_its_word(start_supervisor: Any) -> None:
    """The child is frozen (SIGSTOP), so it cannot notice that its browser died: the
    watchdog sees the browser process it named is gone and settles the job at once."""
    run = await start_supervisor(wait_ready=1, MAX_CONCURRENT_RENDERS="2", SLOTS_PER_CHILD="2",
                                 JOB_TIMEOUT_SECONDS="120", MAX_ATTEMPTS="1", STALE_AFTER_SECONDS="3600")
    sup: Supervisor = run.sup
    job_id = await create(sup.parts.queue, test_template("busy-loop"))
    handle = await inflight_handle(sup, job_id)
    await wait_until(lambda: handle.browser_pid > 0 and job_id in handle.assignments, 30, "the browser pid known")
    os.kill(handle.pid, signal.SIGSTOP)
    os.kill(handle.browser_pid, signal.SIGKILL)
    row = await wait_for_status(sup.parts.queue, job_id, {"failed", "completed"}, 60)
    assert row["status"] == "failed" and row["error_category"] == "transient", row
    assert row["metadata"]["failure_reason"] == "child_crashed", row
    await wait_until(lambda: handle not in sup.parts.pool.handles, 30, "the frozen child reaped")
    assert sup.parts.pool.stats.kills.get("crashed", 0) == 1, sup.parts.pool.stats.kills


async def test_a_job_lost_with_a_child_killed_for_another_jobs_sake_spends_no_attempt(start_supervisor: Any) -> None:
    """A cancelled page is stopped, but its child is frozen (SIGSTOP) and cannot answer: after
    the grace the watchdog kills the child for the cancelled job's sake. The job beside it
    is handed back without spending an attempt (MAX_ATTEMPTS=1: a charged loss would fail
    it) and completes in the replacement child."""
    release = threading.Event()
    server = _held_server(release)
    try:
        run = await start_supervisor(wait_ready=1, **_env(
            server, MAX_CONCURRENT_RENDERS="2", SLOTS_PER_CHILD="2", MAX_ATTEMPTS="1", JOB_TIMEOUT_SECONDS="120",
            STALE_AFTER_SECONDS="3600"))
        sup: Supervisor = run.sup
        busy, other, handle = await _busy_beside_held(sup, server)
        os.kill(handle.pid, signal.SIGSTOP)
        assert await sup.parts.queue.cancel(busy) == "processing"
        row = await wait_for_status(sup.parts.queue, busy, {"cancelled", "failed", "completed"}, 60)
        assert row["status"] == "cancelled", row
        release.set()
        done = await wait_for_status(sup.parts.queue, other, {"completed", "failed"}, 90)
        assert done["status"] == "completed", done
        assert done["attempts"] == 2 and done["max_attempts"] == 2, done  # the first claim was handed back
        assert handle not in sup.parts.pool.handles
    finally:
        release.set()
        server.close()
