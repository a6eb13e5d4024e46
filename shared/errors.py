"""A failed attempt as an exception: its category decides retry or fail (see shared/vocabulary.py)."""

from __future__ import annotations

from shared.vocabulary import ErrorCategory, RenderFailure

__all__ = ["ErrorCategory", "JobError", "RenderFailure"]


class JobError(Exception):
    """An attempt failed; the category decides retry or fail, the code says why (for readers)."""

    def __init__(self, category: ErrorCategory, message: str, code: RenderFailure = RenderFailure.INTERNAL) -> None:
        super().__init__(message)
        self.category: ErrorCategory = category
        self.message = message
        self.code = code
