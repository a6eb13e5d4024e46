"""Error categories: what the queue does with a failed attempt.

``transient`` and ``resource`` are retried with backoff until max_attempts;
``permanent`` and ``validation`` fail the job at once.
"""

from __future__ import annotations

from typing import Literal

ErrorCategory = Literal["transient", "permanent", "resource", "validation"]
RETRYABLE: frozenset[str] = frozenset({"transient", "resource"})
CATEGORIES: tuple[ErrorCategory, ...] = ("transient", "permanent", "resource", "validation")


class JobError(Exception):
    """An attempt failed; the category decides retry or fail."""

    def __init__(self, category: ErrorCategory, message: str) -> None:
        super().__init__(message)
        self.category: ErrorCategory = category
        self.message = message
