"""``GET /v1/jobs/{id}/events``: server-sent status events, bounded in number and in cost.

A stream reads its job once (through the HTTP side's pool) and then holds no
database connection: it waits on a queue fed by the one LISTEN connection
(supervisor/queue/listener.py), or, with LISTEN off, by one poller that reads every
watched job in a single query per interval. Keepalives are comments, not queries.

Open streams are capped per user (the job's owner) and in all; beyond either
cap the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.vocabulary import FINAL_STATUSES
from supervisor.http.problems import ApiProblem
from supervisor.http.schemas import StatusEvent, encode
from supervisor.queue.listener import StatusFanout, fetch_statuses
from supervisor.queue.store import JobStore
from supervisor.telemetry import error_reporting
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 1.0
STREAM_RETRY_AFTER_SECONDS = 30


class StreamLimits:
    """Counts open streams; :meth:`open` refuses past a cap with a 429."""

    def __init__(self, total: int, per_user: int) -> None:
        self.total = total
        self.per_user = per_user
        self.by_user: Counter[str] = Counter()

    @property
    def open_streams(self) -> int:
        return sum(self.by_user.values())

    def open(self, user_id: str) -> Callable[[], None]:
        """Count a stream for `user_id`; returns the function that closes it (call it once)."""
        if self.by_user[user_id] >= self.per_user:
            raise self._refuse(f"this user already has {self.per_user} open event streams (MAX_EVENT_STREAMS_PER_USER)")
        if self.open_streams >= self.total:
            raise self._refuse(f"this worker already has {self.total} open event streams (MAX_EVENT_STREAMS)")
        self.by_user[user_id] += 1
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                self.by_user[user_id] -= 1
                if self.by_user[user_id] <= 0:
                    del self.by_user[user_id]

        return close

    @staticmethod
    def _refuse(detail: str) -> ApiProblem:
        return ApiProblem(
            429,
            f"{detail}; close one or poll GET /v1/jobs/{{id}}",
            slug="too-many-streams",
            headers={"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)},
            extra={"retry_after_seconds": STREAM_RETRY_AFTER_SECONDS},
        )


class StatusPoller(StatusFanout):
    """The feed without LISTEN (e.g. behind a transaction pooler): one query per interval for all streams."""

    def __init__(self, queue: JobStore, interval: float = POLL_INTERVAL_SECONDS,
                 metrics: Metrics | None = None) -> None:
        super().__init__()
        self.queue = queue
        self.metrics = metrics
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def watch(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        q = super().watch(job_id)
        if self._task is None or self._task.done():
            # Lives only while a stream is open, so it is started here, not by the TaskOwner;
            # a failure is still seen: logged, counted, reported, and the next stream restarts it.
            self._task = asyncio.create_task(self._run(), name="status-poller")
            self._task.add_done_callback(self._report)
        return q

    def _report(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("status poller failed; the next stream restarts it", exc_info=exc)
        if self.metrics is not None:
            self.metrics.background_failures.labels("status-poller").inc()
        if exc is not None:
            error_reporting.report_exception(exc, task="status-poller")

    async def _run(self) -> None:
        while self.watched:
            await asyncio.sleep(self.interval)
            watched = self.watched
            if not watched:
                return
            try:
                async with self.queue.pool.connection() as conn:
                    messages = await fetch_statuses(conn, watched)
            except Exception as exc:  # the database is away: the streams keep waiting, keepalives go on
                log.debug("status poll failed: %s", exc)
                continue
            for message in messages:
                self.deliver(message)


class EventStream(StreamingResponse):
    """A streaming response that releases its watch and its stream count however it ends,
    even if the body never starts (the client left first)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def open_stream(
    first: dict[str, Any],
    feed: StatusFanout,
    updates: asyncio.Queue[dict[str, Any]],
    limits: StreamLimits,
    keepalive: float,
) -> EventStream:
    """The response for a job the caller may see; `updates` was watched before `first` was read."""
    job_id = str(first["id"])
    try:
        close_count = limits.open(str(first["user_id"]))
    except ApiProblem:
        feed.unwatch(job_id, updates)
        raise

    def on_close() -> None:
        feed.unwatch(job_id, updates)
        close_count()

    return EventStream(_events(StatusEvent.of(first), updates, keepalive), on_close)


def _frame(event: StatusEvent) -> bytes:
    return b"event: status\ndata: " + encode(event) + b"\n\n"


async def _events(first: StatusEvent, updates: asyncio.Queue[dict[str, Any]], keepalive: float) -> AsyncIterator[bytes]:
    yield b"retry: 3000\n\n"
    yield _frame(first)
    last = first
    while last.status not in FINAL_STATUSES:
        message: dict[str, Any] | None = None
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(updates.get(), keepalive)
        if message is None:
            yield b": keepalive\n\n"
            continue
        try:
            event = StatusEvent.of(message)
        except (KeyError, TypeError, ValueError):  # not the shape the trigger sends: ignore it
            continue
        if event == last:  # a repeat (a poll, a resync after reconnect): nothing new
            continue
        last = event
        yield _frame(event)
