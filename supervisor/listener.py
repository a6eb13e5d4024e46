"""LISTEN/NOTIFY on one dedicated connection, re-established after it drops.

Two channels: ``export_jobs_available`` (a job became pending: wake the claimer)
and ``export_job_status`` (JSON {"id", "user_id", "status", "attempts",
"cancel_requested"}: status streams and cancel requests). Subscribers get the
decoded payloads on asyncio queues; the claimer gets an Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import psycopg

log = logging.getLogger(__name__)

AVAILABLE_CHANNEL = "export_jobs_available"
STATUS_CHANNEL = "export_job_status"


class Listener:
    def __init__(self, conninfo: str, *, reconnect_delay: float = 1.0, connect_timeout: int = 5) -> None:
        self.conninfo = conninfo
        self.reconnect_delay = reconnect_delay
        self.connect_timeout = connect_timeout
        self.job_available = asyncio.Event()
        self.connected = asyncio.Event()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.backend_pid: int | None = None
        self.reconnects = 0

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
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=self.connect_timeout,
            application_name="export-worker-listen",
        )
        self._conn = conn
        await conn.execute(f"LISTEN {AVAILABLE_CHANNEL}")
        await conn.execute(f"LISTEN {STATUS_CHANNEL}")
        self.backend_pid = conn.info.backend_pid
        self.connected.set()
        async for notify in conn.notifies():
            if notify.channel == AVAILABLE_CHANNEL:
                self.job_available.set()
            elif notify.channel == STATUS_CHANNEL:
                self._publish(notify.payload)
        raise ConnectionError("notification stream ended")

    def _publish(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a stuck reader loses updates, not the worker
                q.put_nowait(message)
