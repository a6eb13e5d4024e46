"""Delivery of a rendered file: fence check, upload to this claim's own key, the completion link.

The link made here fills ``file_url``, the seed schema's column, for readers of
the row itself (SQL, Supabase Realtime) who act when the job completes; it dies
after SIGNED_URL_TTL_SECONDS. No reader in this product uses it: the API, the
console, the CLI, the mail and the webhooks sign a link from ``storage_path``
when they hand one out (supervisor/delivery/links.py), so a 30-day file links for 30 days.

A worker that lost its claim never touches a finished job's file: the fence check
before the upload records the key this claim writes (``export_uploads``); the key
is this claim's own (``{user}/{job}/{attempt}.ext``); and when the fenced
completion finds the claim lost, :meth:`Delivery.discard` deletes the object.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.contrast import menu_colour_notes
from shared.messages import Rendered
from shared.testhooks import pause_point
from shared.vocabulary import StorageOperation
from supervisor.delivery.breaker import STATE_VALUES, BreakerStorage, CircuitBreaker
from supervisor.delivery.fence import FenceCheck
from supervisor.delivery.links import download_link
from supervisor.delivery.storage import object_key
from supervisor.queue.jobs import Claim, JobQueue
from supervisor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """A cancel was requested before the upload: nothing was stored."""


@dataclass(frozen=True)
class StoredFile:
    key: str
    url: str  # for the row's file_url only (see above)
    sha256: str


class Delivery:
    def __init__(
        self,
        queue: JobQueue,
        storage: BreakerStorage,
        breaker: CircuitBreaker,
        metrics: Metrics,
        link_ttl_seconds: int,
    ) -> None:
        self.queue = queue
        self.fence = FenceCheck(queue)
        self.storage = storage
        self.breaker = breaker
        self.metrics = metrics
        self.link_ttl_seconds = link_ttl_seconds

    async def store(self, claim: Claim, result: Rendered) -> StoredFile:
        """Upload the render to this claim's own key.

        Raises ClaimLost (nothing uploaded), Cancelled (nothing uploaded) or
        StorageError (the upload failed; whatever was written is the orphan sweep's).
        """
        key = object_key(claim.user_id, claim.job_id, claim.attempt, result.content_type)
        # No upload unless a heartbeat sent after the render ended still holds the claim.
        if await self.fence.check(claim, key):
            raise Cancelled(claim.job_id)
        output = Path(result.output_path)

        def upload() -> StoredFile:  # one thread hop for all of it
            pause_point("upload", claim.job_id)
            with open(output, "rb") as file:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
            self.storage.put(key, output, result.content_type)
            return StoredFile(key, download_link(self.storage, key, self.link_ttl_seconds), digest)

        try:
            return await asyncio.to_thread(upload)
        except Exception:
            self.metrics.storage_errors.labels(StorageOperation.UPLOAD).inc()
            raise
        finally:
            self.metrics.breaker_state.set(STATE_VALUES[self.breaker.state])

    async def discard(self, claim: Claim, key: str) -> None:
        """A claim that lost deletes its own object (best effort: the orphan sweep backs it up)."""
        try:
            await asyncio.to_thread(self.storage.delete, [key])
            await self.fence.journal.forget(claim, key)
            log.info("object of a lost claim deleted", extra={"job_id": claim.job_id, "storage_path": key})
        except Exception as exc:
            log.warning("could not delete the object of a lost claim; the orphan sweep will",
                        extra={"job_id": claim.job_id, "storage_path": key, "error": str(exc)})


def completion_metadata(
    result: Rendered, stored: StoredFile, worker_id: str, payload: Any = None
) -> dict[str, Any]:
    """Facts about the render kept on the job row (``metadata``); for a menu, its colours
    (``menu_colors``: the header's text colour, and the accent darkened for text if it had to be)."""
    metadata: dict[str, Any] = {
        "pages": result.pages,
        "width": result.width,
        "height": result.height,
        "render_ms": round(result.render_ms, 1),
        "blocked_requests": [b.url for b in result.blocked][:50],
        "blocked_count": len(result.blocked),
        "subresources_fetched": result.fetched,
        "worker_id": worker_id,
        "sha256": stored.sha256,
        "menu_colors": menu_colour_notes(payload),
    }
    return {k: v for k, v in metadata.items() if v is not None}
