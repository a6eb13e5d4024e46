"""One JSON object per line on stdout, with the seed's fields.

timestamp, level, message, job_id, worker_id, duration_ms, error_category (the
last four when they apply), plus any other `extra=` keys.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from shared.vocabulary import LogLevel

_encoder = msgspec.json.Encoder(enc_hook=str)  # UUIDs, paths, anything else: its str()
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": LogLevel.for_number(record.levelno),
            "message": record.getMessage(),
            "worker_id": getattr(record, "worker_id", None) or self.worker_id,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def setup_logging(level: str, worker_id: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(worker_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LogLevel.number_of(level))
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("httpx", "httpcore", "hpack", "psycopg.pool", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
