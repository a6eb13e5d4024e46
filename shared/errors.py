"""A failed attempt as an exception: its category decides retry or fail (see shared/vocabulary.py)."""

from __future__ import annotations

from shared.vocabulary import ErrorCategory

__all__ = ["ErrorCategory", "JobError"]


class JobError(Exception):
    """An attempt failed; the category decides retry or fail."""

    def __init__(self, category: ErrorCategory, message: str) -> None:
        super().__init__(message)
        self.category: ErrorCategory = category
        self.message = message
