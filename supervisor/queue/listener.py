"""LISTEN/NOTIFY on one dedicated connection, re-established after it drops.

Two channels: ``export_jobs_available`` (a job became pending: wake the claimer)
and ``export_job_status`` (JSON {"id", "user_id", "status", "attempts",
"cancel_requested"}: status streams and cancel requests). Subscribers get every
decoded payload on an asyncio queue; event streams *watch* one job and get only
its payloads (a dict lookup per notification, however many streams are open).
The claimer gets an Event.

The connection is checked by a round trip at start: a NOTIFY sent from another
connection must arrive on it within ROUND_TRIP_SECONDS. Through a transaction-mode
pooler it does not (the LISTEN ran on a server connection the pooler has since
given to someone else); the worker then polls instead (supervisor/composition.py).

Streams hold no database connection: after a reconnect (notifications may have
been missed) the listener reads the status of every watched job in one query on
its own connection and hands it to the watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from shared.config import Settings
from supervisor.queue.database import connection_kwargs, one_line
from supervisor.queue.queries import query

log = logging.getLogger(__name__)

AVAILABLE_CHANNEL = "export_jobs_available"
STATUS_CHANNEL = "export_job_status"
PING_CHANNEL = "export_worker_ping"  # the round trip that proves notifications arrive
ROUND_TRIP_SECONDS = 2.0
IDLE_CHECK_SECONDS = 15.0  # a LISTEN connection is asked to answer at least this often


class NotificationsLost(Exception):
    """A NOTIFY to ourselves did not come back on the LISTEN connection."""


WATCH_QUEUE_SIZE = 16


class StatusFanout:
    """Status payloads to the streams watching each job."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    def watch(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        """A queue of `job_id`'s status payloads; call unwatch() when done."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=WATCH_QUEUE_SIZE)
        self._watchers.setdefault(job_id, set()).add(q)
        return q

    def unwatch(self, job_id: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self._watchers.get(job_id)
        if queues is not None:
            queues.discard(q)
            if not queues:
                del self._watchers[job_id]

    @property
    def watched(self) -> list[str]:
        return list(self._watchers)

    def deliver(self, message: dict[str, Any]) -> None:
        for q in self._watchers.get(str(message.get("id")), ()):
            with contextlib.suppress(asyncio.QueueFull):  # a stuck reader loses updates, not the worker
                q.put_nowait(message)


async def fetch_statuses(conn: psycopg.AsyncConnection[Any], job_ids: list[str]) -> list[dict[str, Any]]:
    """The status payloads of `job_ids` (the NOTIFY shape), in one query."""
    cur = await conn.cursor(row_factory=dict_row).execute(query("job_statuses"), {"ids": job_ids})
    return [{**row, "id": str(row["id"])} for row in await cur.fetchall()]


class Listener(StatusFanout):
    def __init__(self, conninfo: str, settings: Settings, *, reconnect_delay: float = 1.0) -> None:
        self.conninfo = conninfo
        self.reconnect_delay = reconnect_delay
        self.kwargs = connection_kwargs(settings, "export-worker-listen")
        super().__init__()
        self.job_available = asyncio.Event()
        self.connected = asyncio.Event()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.backend_pid: int | None = None
        self.reconnects = 0

    @property
    def open_connections(self) -> int:
        return 0 if self._conn is None or self._conn.closed else 1

    async def round_trip(self) -> str | None:
        """None when notifications really reach a fresh LISTEN connection, else why not.

        The NOTIFY is sent from a second connection: through a transaction pooler the
        LISTEN ran on a server connection the pooler hands to the next client, so the
        NOTIFY reaches that client, or nobody, and never the listener. (A NOTIFY sent
        on the listener's own client connection can come back by luck when the
        pooler is idle and gives it the same server connection again.)
        """
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, **self.kwargs) as conn, \
                    await psycopg.AsyncConnection.connect(self.conninfo, **self.kwargs) as notifier:
                await self._subscribe_and_ping(conn, notifier)
        except (psycopg.Error, NotificationsLost) as exc:
            return one_line(exc)
        return None

    async def _subscribe_and_ping(
        self, conn: psycopg.AsyncConnection[Any], notifier: psycopg.AsyncConnection[Any]
    ) -> None:
        for channel in (AVAILABLE_CHANNEL, STATUS_CHANNEL, PING_CHANNEL):
            await conn.execute(f"LISTEN {channel}")
        token = uuid.uuid4().hex
        await notifier.execute("SELECT pg_notify(%s, %s)", (PING_CHANNEL, token))
        async for notify in conn.notifies(timeout=ROUND_TRIP_SECONDS):
            if notify.channel == PING_CHANNEL and notify.payload == token:
                return
            self._dispatch(notify)
        raise NotificationsLost(f"a NOTIFY did not arrive on the LISTEN connection within {ROUND_TRIP_SECONDS:g}s")

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue of status payloads; call unsubscribe() when done."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)

    async def run(self) -> None:
        """Listen forever; reconnect after any failure."""
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped connection, a restarting database
                self.connected.clear()
                log.warning("LISTEN connection lost; reconnecting", extra={"error": str(exc)})
            finally:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
            self.reconnects += 1
            # Anything may have happened while we were deaf: let the claimer look.
            self.job_available.set()
            await asyncio.sleep(self.reconnect_delay)

    async def _listen_once(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.conninfo, **self.kwargs)
        self._conn = conn
        await self._subscribe_and_ping(conn, conn)  # checked by round_trip() at start; here: still delivering
        self.backend_pid = conn.info.backend_pid
        if self.reconnects and self.watched:  # what the streams may have missed while we were deaf
            for message in await fetch_statuses(conn, self.watched):
                self.deliver(message)
        self.connected.set()
        while not conn.closed:
            async for notify in conn.notifies(timeout=IDLE_CHECK_SECONDS):
                self._dispatch(notify)
            # Every so often the link must answer: one that went silent (a NAT that forgot
            # it) would otherwise look idle forever while every notification is lost.
            async with asyncio.timeout(ROUND_TRIP_SECONDS):
                await conn.execute("SELECT 1")
        raise ConnectionError("notification stream ended")

    def _dispatch(self, notify: psycopg.Notify) -> None:
        if notify.channel == AVAILABLE_CHANNEL:
            self.job_available.set()
        elif notify.channel == STATUS_CHANNEL:
            self._publish(notify.payload)

    def _publish(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a stuck reader loses updates, not the worker
                q.put_nowait(message)
        self.deliver(message)
