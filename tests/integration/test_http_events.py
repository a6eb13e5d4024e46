"""Event-stream plumbing: per-job fan-out, the resync after a lost LISTEN connection, stream caps, JSON depth."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from supervisor.http.events import StreamLimits
from supervisor.http.problems import ApiProblem
from supervisor.http.schemas import CREATE_BODY_DEPTH, decode_create
from supervisor.queue.jobs import JobQueue
from supervisor.queue.listener import Listener
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


DEEP = 1_990_000  # the bodies: 4 MB, once a 3 s regex loop each on the event loop


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"payload": ' + b"[" * DEEP + b"]" * DEEP + b"}", "payload"),
        (b'{"payload": ' + b'{"a": ' * 500_000 + b"1" + b"}" * 500_000 + b"}", "payload.a"),
        (b"[" * DEEP, ""),  # unbalanced
        # the tagged union looks ahead for "kind" past a deep value
        (b'{"export_type": "pdf", "payload": {"source": {"html": ' + b"[" * DEEP + b"]" * DEEP
         + b', "kind": "html"}}}', ""),
        (b'{"export_type": "pdf", "payload": {"source": {"kind": "html", "html": "x"}}, "menu_id": '
         + b"[" * DEEP + b"]" * DEEP + b"}", "menu_id"),
        # malformed after a wide value: the stdlib re-parse that names a field is for small bodies only
        (b'{"export_type": "pdf", "payload": {"source": {"x": ' + b"[]," * 1_300_000 + b"[]] }", ""),
    ],
    ids=["deep-array", "deep-object", "unbalanced", "tag-lookahead", "deep-later-field", "wide-malformed"],
)
def test_deep_or_wide_bodies_are_refused_without_a_scan(raw: bytes, field: str) -> None:
    with pytest.raises(ApiProblem) as refused:
        decode_create(raw, 32)
    assert refused.value.status == 422 and refused.value.field == field, refused.value.detail


def test_max_json_depth_below_the_schema_still_applies() -> None:
    menu = (b'{"export_type": "pdf", "payload": {"source": {"kind": "menu", "menu": {"restaurant": {"name": "r"}, '
            b'"sections": [{"title": "s", "items": [{"name": "i", "dietary": ["vegan"]}]}]}}}}')
    assert decode_create(menu, CREATE_BODY_DEPTH).payload.source.menu.sections[0].items[0].name == "i"
    assert decode_create(menu, 9) is not None  # it nests exactly 9 levels
    with pytest.raises(ApiProblem) as refused:
        decode_create(menu, 8)
    assert "nests deeper than 8 levels (MAX_JSON_DEPTH)" in refused.value.detail


async def test_a_failing_status_poller_is_logged_counted_and_restarted_by_the_next_stream(
    queue: JobQueue,
) -> None:
    """The poller lives outside the TaskOwner (only while a stream is open), so its own
    failure must still be seen: counted under its name, and the next stream restarts it."""
    from supervisor.http.events import StatusPoller
    from supervisor.telemetry.metrics import Metrics

    metrics = Metrics()
    poller = StatusPoller(queue, interval=0.01, metrics=metrics)
    job = await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf", payload=html_payload())

    def broken(message: dict[str, object]) -> None:
        raise RuntimeError("a bug in delivering a status")

    poller.deliver = broken  # type: ignore[method-assign]
    poller.watch(str(job["id"]))

    def failures() -> float:
        return metrics.registry.get_sample_value(
            "export_background_failures_total", {"task": "status-poller"}) or 0.0

    deadline = time.monotonic() + 60
    while failures() < 1:
        assert time.monotonic() < deadline, "the poller's failure was never counted"
        await asyncio.sleep(0.02)
    first = poller._task
    poller.watch(str(job["id"]))
    assert poller._task is not first and poller._task is not None
    poller._task.cancel()
