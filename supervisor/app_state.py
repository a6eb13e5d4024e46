"""What the HTTP side's handlers share: settings, the API's queue (its own pool), the status feed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import Settings
from supervisor.health import HealthSources
from supervisor.listener import Listener
from supervisor.metrics import Metrics
from supervisor.queue import JobQueue

if TYPE_CHECKING:
    from supervisor.events import StreamLimits
    from supervisor.http_database import HttpDatabase
    from supervisor.links import LinkSigner
    from supervisor.storage import Storage


@dataclass
class AppState:
    """``queue`` runs on the HTTP side's own pool, never the worker's (supervisor.runner._start_http)."""

    settings: Settings
    queue: JobQueue
    metrics: Metrics
    listener: Listener | None
    storage: Storage | None
    link_signer: LinkSigner | None
    files_root: Path | None
    health: HealthSources
    sse_keepalive_seconds: float = 15.0
    # The supervisor this app runs in (the console reads its children live); None in API-only tests.
    worker: Any = field(default=None, repr=False)
    # The pool behind `queue`, revived after an outage (None in tests that bring their own).
    database: HttpDatabase | None = field(default=None, repr=False)
    # Open event streams, per user and in all (filled in by build_app).
    streams: StreamLimits | None = field(default=None, repr=False)
    # /metrics refreshes the queue gauges from the database at most once per interval.
    _stats_at: float = field(default=float("-inf"), repr=False)
    _stats_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
