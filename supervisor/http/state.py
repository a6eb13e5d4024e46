"""What the HTTP side's handlers share: settings, the API's queue (its own pool), the status feed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.config import Settings
from supervisor.http.health import HealthSources
from supervisor.queue.listener import Listener
from supervisor.queue.store import JobStore
from supervisor.queue.workers import WorkerSnapshot
from supervisor.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from supervisor.delivery.links import LinkSigner
    from supervisor.delivery.storage import Storage
    from supervisor.http.database import HttpDatabase
    from supervisor.http.events import StreamLimits


@dataclass
class AppState:
    """``queue`` runs on the HTTP side's own pool, never the worker's (supervisor.runner._start_http)."""

    settings: Settings
    queue: JobStore  # the HTTP side creates, reads and cancels jobs; it never claims
    metrics: Metrics
    listener: Listener | None
    storage: Storage | None
    link_signer: LinkSigner | None
    files_root: Path | None
    health: HealthSources
    sse_keepalive_seconds: float = 15.0
    # This worker's own row, read live from its parts (the console shows it); None in API-only tests.
    local_snapshot: Callable[[], WorkerSnapshot] | None = field(default=None, repr=False)
    # The pool behind `queue`, revived after an outage (None in tests that bring their own).
    database: HttpDatabase | None = field(default=None, repr=False)
    # Open event streams, per user and in all (filled in by build_app).
    streams: StreamLimits | None = field(default=None, repr=False)
    # /metrics refreshes the queue gauges from the database at most once per interval.
    _stats_at: float = field(default=float("-inf"), repr=False)
    _stats_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
