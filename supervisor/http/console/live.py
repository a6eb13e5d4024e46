"""The console's live view: server-sent events that htmx's SSE extension swaps into the page.

A page opens one stream for what it shows: the counts (event ``counts``), its job
rows (event ``row-ID``, a new ``<tr>``) and one job's status (event ``job-ID``).
The stream looks every CONSOLE_LIVE_INTERVAL_MS and sends only what changed; the
counts come from one shared, cached query whatever the number of open streams,
and rows are read by primary key, so an open console costs the database little.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import jinja2
import msgspec
from starlette.requests import Request

from supervisor.http.console.store import ConsoleStore

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0


def sse_event(name: str, html: str) -> bytes:
    """One event; every line of the HTML becomes a data line (EventSource joins them with newlines)."""
    data = "".join(f"data: {line}\n" for line in html.strip().splitlines() or [""])
    return f"event: {name}\n{data}\n".encode()


class Watch(msgspec.Struct, frozen=True, kw_only=True):
    """What one page shows and wants kept current."""

    base: str  # the console's mount path, for links in the fragments
    counts: bool = False
    rows: list[UUID] = []
    job: UUID | None = None


class LiveStream:
    def __init__(self, store: ConsoleStore, env: jinja2.Environment, *, interval: float) -> None:
        self.store = store
        self.env = env
        self.interval = interval

    async def events(self, request: Request, watch: Watch) -> AsyncIterator[bytes]:
        """Everything once (the page may be older than the stream), then what changes."""
        sent: dict[str, Any] = {}
        yield b"retry: 3000\n\n"
        last_write = time.monotonic()
        while True:
            # Shielded: a page closed mid-query must not cancel the query (psycopg would then
            # close the connection); the look finishes and gives its connection back.
            out = await asyncio.shield(asyncio.ensure_future(self._look(sent, watch)))
            for chunk in out:
                yield chunk
            if out:
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= KEEPALIVE_SECONDS:
                yield b": keepalive\n\n"
                last_write = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(self.interval)

    async def _look(self, sent: dict[str, Any], watch: Watch) -> list[bytes]:
        try:
            return await self._changes(sent, watch)
        except Exception as exc:  # the database is away: keep the stream, try again next tick
            log.debug("console live update failed", extra={"error": str(exc)})
            return []

    async def _changes(self, sent: dict[str, Any], watch: Watch) -> list[bytes]:
        out: list[bytes] = []
        if watch.counts:
            # Shared by all streams: one query per interval, however many consoles are open.
            table = await self.store.counts(max_age=self.interval * 0.9)
            if sent.get("counts") != table:
                sent["counts"] = table
                out.append(sse_event("counts", self.env.get_template("_counts.html").render(counts=table)))
        if watch.rows:
            for row in await self.store.job_rows(watch.rows):
                key = f"row-{row['id']}"
                version = (row["status"], row["attempts"], row["updated_at"])
                if sent.get(key) != version:
                    sent[key] = version
                    html = self.env.get_template("_job_row.html").render(row=row, base=watch.base,
                                                                               tier=self.store.tier_name)
                    out.append(sse_event(key, html))
        if watch.job is not None:
            found = await self.store.job(watch.job)
            if found is not None:
                key = f"job-{found['id']}"
                version = (found["status"], found["attempts"], found["updated_at"])
                if sent.get(key) != version:
                    sent[key] = version
                    html = self.env.get_template("_job_status.html").render(job=found, base=watch.base)
                    out.append(sse_event(key, html))
        return out
