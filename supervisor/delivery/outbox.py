"""The one outbox engine: mail and webhooks are two senders plugged into it.

Rows are queued in the same statement as a job's final status
(``export_job_queue_notices``, migration 0011), unique per job and kind/event, so
each job is announced exactly once whatever crashes. The engine owns everything
the two outboxes share (``queries/outbox.sql``):

- the lease: a sender takes due rows for a while; a crashed sender's rows are
  taken by another worker once the lease ends;
- the job's row, joined in the claim (no second query per row), and the check
  that the job is still in the status the row announces (an operator may have
  retried it since: wait while it runs again, give up once it ends otherwise);
- one task per send, no batch barrier, at most ``per_target`` sends to one target
  in flight on this worker: a slow webhook receiver holds up only its own
  deliveries;
- the outcome write, fenced on the lease (``locked_by`` and ``attempts``), and
  tried again within the lease when the database blips, so a send whose
  mark-sent fails is sent again only when the write could not be made at all;
- backoff with jitter, and giving up after the sender's attempts or period.

At-least-once edge: a worker that dies (or loses the database for the whole
lease) between a send and its write leaves the row to be sent again after the
lease. Senders make that repeat harmless where the far side allows it: the
``.eml`` backend writes one file per row, SMTP repeats the row's Message-ID,
webhooks repeat the ``webhook-id``; SendGrid has no idempotency key, so there a
duplicate mail is possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.testhooks import GATE_ENV, pause_point
from shared.vocabulary import FINAL_STATUSES, DeliveryOutcome, JobStatus
from supervisor.queue.group_commit import GroupCommit
from supervisor.queue.queries import query

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], None]
RECORD_FIRST_PAUSE, RECORD_MAX_PAUSE = 0.2, 2.0  # between tries of an outcome write, while the lease lasts


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter; give up after `max_attempts` or `period_seconds` after the event."""

    base_seconds: float
    cap_seconds: float
    max_attempts: int | None = None
    period_seconds: float | None = None

    def next_try(self, attempts: int, age_seconds: float, rng: random.Random) -> tuple[float, bool]:
        """(seconds until the next try, whether to give up instead)."""
        delay = min(self.cap_seconds, self.base_seconds * 2 ** max(attempts - 1, 0))
        delay = delay / 2 + rng.uniform(0, delay / 2)
        give_up = self.max_attempts is not None and attempts >= self.max_attempts
        if self.period_seconds is not None:
            left = self.period_seconds - age_seconds
            give_up = give_up or left <= 0
            delay = min(delay, max(left, 0.0))  # a last try at the end of the period
        return delay, give_up


@dataclass(frozen=True)
class OutboxSpec:
    """One outbox: its table, and how its sends are bounded and retried."""

    name: str  # "mail", "webhook": logs and task names
    table: str
    done_column: str  # the column that marks a row sent
    lease_seconds: float
    retry: RetryPolicy
    per_target: int  # sends to one target in flight on this worker
    in_flight: int  # sends in flight on this worker, all targets
    idle_seconds: float  # poll this often when nothing wakes the sender
    sent_point: str  # the test pause point between a send and its write


@dataclass(frozen=True)
class Leased:
    """A row this worker holds a lease on, with its job's row joined (``job_status`` None: the job is gone)."""

    row: dict[str, Any]
    leased_at: float  # monotonic

    @property
    def job_id(self) -> str:
        return str(self.row["job_id"])

    @property
    def attempts(self) -> int:
        return int(self.row["attempts"])

    @property
    def target(self) -> str:
        return str(self.row["target"] or "")

    @property
    def job_status(self) -> JobStatus | None:
        status = self.row["job_status"]
        return None if status is None else JobStatus(status)

    @property
    def created_at(self) -> datetime:
        created: datetime = self.row["created_at"]
        return created


@dataclass(frozen=True)
class Sent:
    status: int | None = None  # the far side's status code, when it has one


@dataclass(frozen=True)
class Disabled:
    """The receiver said never again (a webhook's 410 Gone)."""

    status: int
    error: str


@dataclass(frozen=True)
class NotSent:
    error: str
    status: int | None = None
    give_up: bool = False  # never sendable (a refused target, a rejected address)


Attempt = Sent | Disabled | NotSent


class Sender(Protocol):
    """What a kind of outbox plugs into the engine: one send, and its own metrics and log lines."""

    spec: OutboxSpec

    def expected_status(self, item: Leased) -> JobStatus:
        """The status the job must still have for this row to be true (completed for a completion mail)."""
        ...

    async def send(self, item: Leased) -> Attempt: ...

    def record(self, item: Leased, verdict: DeliveryOutcome, attempt: Attempt, retry_in: float) -> None:
        """Count and log what became of the attempt."""
        ...


def outbox_queries(table: str, done_column: str) -> dict[str, sql.Composed]:
    """The engine's queries (queries/outbox.sql) for one outbox table, by short name."""
    names = {"outbox": sql.Identifier(table), "done_at": sql.Identifier(done_column)}
    return {name: query(f"outbox_{name}").format(**names) for name in ("claim", "done", "disabled", "failed")}


class Outbox:
    """Drains one outbox table for one sender; see the module docstring."""

    def __init__(self, pool: AsyncConnectionPool[Any], worker_id: str, sender: Sender, spawn: Spawn) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.sender = sender
        self.spec = sender.spec
        self._spawn = spawn
        self._queries = outbox_queries(self.spec.table, self.spec.done_column)
        self._sending: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()
        self._rng = random.Random()
        self.wake = asyncio.Event()  # set when a row may have been queued, or a send ended
        # Mark-sent writes that arrive while one is in flight share the next statement. A
        # cancelled statement may have committed: its waiters are cancelled, not told it failed.
        self._done: GroupCommit[tuple[dict[str, Any], int | None], None] = GroupCommit(
            self._done_batch, cancelled=lambda _: None)

    @property
    def sending(self) -> int:
        return sum(self._sending.values())

    async def run(self) -> None:
        """Claim while there is room and work; otherwise sleep until woken or the idle poll."""
        while True:
            self.wake.clear()  # before looking: a row queued or a send ending from here on wakes the wait
            room = self.spec.in_flight - self.sending
            claimed = 0
            if room > 0:
                try:
                    claimed = await self.drain_once(room)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database is away; try again later
                    log.warning(f"{self.spec.name} outbox unavailable", extra={"error": str(exc)})
            if claimed < room or room <= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.spec.idle_seconds)

    async def drain_once(self, limit: int | None = None) -> int:
        """Lease what is due (within the per-target limits) and start a send for each; returns how many."""
        spec = self.spec
        limit = min(limit or spec.in_flight, spec.in_flight)
        busy = {target: n for target, n in self._sending.items() if n > 0}
        params = {
            "limit": limit, "scan": limit * 4, "per_target": spec.per_target,
            "full_targets": [t for t, n in busy.items() if n >= spec.per_target],
            "busy_targets": list(busy), "busy_counts": list(busy.values()),
            "worker_id": self.worker_id, "lease_seconds": spec.lease_seconds,
        }
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(self._queries["claim"], params)
            rows = await cur.fetchall()
        now = time.monotonic()
        for row in rows:
            item = Leased(dict(row), now)
            self._sending[item.target] += 1
            self._idle.clear()
            self._spawn(self._deliver(item), f"{spec.name} send {row['id']}")
        return len(rows)

    async def wait_idle(self) -> None:
        """Until no send of this worker is in flight (tests, measurements)."""
        await self._idle.wait()

    async def _deliver(self, item: Leased) -> None:
        try:
            attempt = await self._attempt(item)
            await self._settle(item, attempt)
        finally:
            self._sending[item.target] -= 1
            if self._sending[item.target] <= 0:
                del self._sending[item.target]
            if not self._sending:
                self._idle.set()
            self.wake.set()  # room for another send

    async def _attempt(self, item: Leased) -> Attempt:
        status = item.job_status
        if status is None:
            return NotSent("the job was deleted", give_up=True)
        if status != self.sender.expected_status(item):
            # An operator retried the job since: wait while it runs again; once it ends otherwise, the row is stale.
            return NotSent(f"not sent: the job is now {status}", give_up=status in FINAL_STATUSES)
        try:
            attempt = await self.sender.send(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a storage link or anything else: retry later
            return NotSent(f"{type(exc).__name__}: {exc}")
        if isinstance(attempt, Sent) and os.environ.get(GATE_ENV):
            # Tests stop a worker here (after the send, before the write): the at-least-once edge.
            await asyncio.to_thread(pause_point, self.spec.sent_point, str(item.row.get("webhook_id") or item.job_id))
        return attempt

    async def _settle(self, item: Leased, attempt: Attempt) -> None:
        retry_in = 0.0
        match attempt:
            case Sent(status=status):
                verdict = DeliveryOutcome.DELIVERED
                await self._record(item, "done", status=status)
            case Disabled(status=status, error=error):
                verdict = DeliveryOutcome.DISABLED
                await self._record(item, "disabled", status=status, error=error)
            case NotSent(error=error, status=status, give_up=give_up):
                retry_in, out_of_tries = self.spec.retry.next_try(
                    item.attempts, float(item.row["age_seconds"]), self._rng)
                verdict = DeliveryOutcome.FAILED if give_up or out_of_tries else DeliveryOutcome.RETRY
                await self._record(item, "failed", status=status, error=error, delay_seconds=retry_in,
                                   give_up=verdict is DeliveryOutcome.FAILED)
        self.sender.record(item, verdict, attempt, retry_in)

    async def _done_batch(self, batch: Sequence[tuple[dict[str, Any], int | None]]) -> list[None]:
        """One fenced mark-sent for every send in `batch` (a row whose lease ended is left alone)."""
        async with self.pool.connection() as conn:
            await conn.execute(self._queries["done"], {
                "ids": [fence["id"] for fence, _ in batch], "attempts": [fence["attempts"] for fence, _ in batch],
                "statuses": [status for _, status in batch], "worker_id": self.worker_id})
        return [None] * len(batch)

    async def _record(self, item: Leased, name: str, **params: Any) -> None:
        """The fenced outcome write, tried again while the lease lasts (a reset connection, a failover).

        Another worker sends the row again only once the lease has ended, so until then
        a late write is still this send's: a mail whose mark-sent met a dropped
        connection is recorded, not sent twice.
        """
        fence = {"id": item.row["id"], "worker_id": self.worker_id, "attempts": item.attempts}
        lease_ends = item.leased_at + self.spec.lease_seconds
        pause = RECORD_FIRST_PAUSE
        while True:
            try:
                if name == "done":
                    await self._done.submit((fence, params["status"]))
                else:
                    async with self.pool.connection() as conn:
                        await conn.execute(self._queries[name], fence | params)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                fields = {"job_id": item.job_id, "outcome": name, "error": str(exc)}
                if time.monotonic() + pause >= lease_ends:
                    log.error(f"{self.spec.name} outcome not recorded; the row is tried again after its lease",
                              extra=fields)
                    raise
                log.warning(f"{self.spec.name} outcome write failed; trying again", extra=fields)
                with contextlib.suppress(Exception):
                    await self.pool.check()  # drop the pool's other dead connections, not one per try
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECORD_MAX_PAUSE)
