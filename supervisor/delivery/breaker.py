"""A circuit breaker for the file store, and a :class:`Storage` wrapper that uses it.

States: ``closed`` (calls go through), ``open`` (calls are refused at once for
``cooldown_seconds``), ``half_open`` (after the cooldown exactly one probe call
is let through at a time; its success closes the breaker, its failure opens it
again for another cooldown).

Only *transient* failures (5xx, 429, timeouts, connection errors) should be
passed to :meth:`CircuitBreaker.record_failure`; that is the caller's decision.
A permanent error (a 4xx) proves the store answered, so :class:`BreakerStorage`
records it as a success. Anything else (a bug, a missing local input file) is
recorded as neutral: it releases a half-open probe slot without changing state.

With ``enabled=False`` (``ENABLE_CIRCUIT_BREAKER=false``) :meth:`allow` is always
True and the state stays ``closed``.
"""

from __future__ import annotations

import math
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

from shared.vocabulary import ErrorCategory
from supervisor.delivery.storage import Storage, StorageError

BreakerState = Literal["closed", "open", "half_open"]
# Values for the export_storage_breaker_state gauge.
STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}

T = TypeVar("T")


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
        on_state_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_seconds <= 0:
            raise ValueError("cooldown_seconds must be positive")
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = float(cooldown_seconds)
        self.enabled = enabled
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None  # set while a half-open probe is in flight

    # ---- queries ---------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current_state_locked()

    def seconds_until_retry(self) -> float:
        """While open: seconds until a probe will be let through; otherwise 0."""
        with self._lock:
            if self._state != "open":
                return 0.0
            return max(0.0, self._opened_at + self.cooldown_seconds - self._clock())

    # ---- decisions -------------------------------------------------------

    def allow(self) -> bool:
        """May a call go to the store now? In half-open, True for exactly one caller at a time."""
        if not self.enabled:
            return True
        with self._lock:
            state = self._current_state_locked()
            if state == "closed":
                return True
            if state == "open":
                return False
            # half_open: one probe at a time. A probe that never reported back
            # (its thread died) is given up on after one cooldown.
            now = self._clock()
            if self._probe_started is not None and now - self._probe_started < self.cooldown_seconds:
                return False
            self._probe_started = now
            return True

    def record_success(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._failures = 0
            self._probe_started = None
            self._set_state_locked("closed")

    def record_failure(self) -> None:
        """A transient failure (the caller decides what counts; see the module doc)."""
        if not self.enabled:
            return
        with self._lock:
            state = self._current_state_locked()
            self._failures += 1
            if state == "half_open" or (state == "closed" and self._failures >= self.failure_threshold):
                self._opened_at = self._clock()
                self._probe_started = None
                self._set_state_locked("open")
            elif state == "open":
                # A call that was let through before the breaker opened failed late.
                self._opened_at = self._clock()

    def record_neutral(self) -> None:
        """The call ended in a way that says nothing about the store: free the probe slot."""
        if not self.enabled:
            return
        with self._lock:
            self._probe_started = None

    # ---- internals -------------------------------------------------------

    def _current_state_locked(self) -> BreakerState:
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_seconds:
            self._probe_started = None
            self._set_state_locked("half_open")
        return self._state

    def _set_state_locked(self, state: BreakerState) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_state_change is not None:
            self._on_state_change(state)


class BreakerStorage:
    """A :class:`Storage` that refuses calls while the breaker is open.

    The refusal is ``StorageError("transient", "storage circuit breaker is open; retry in Ns")``
    with ``breaker_open = True`` and ``retry_after`` set; the inner store is not called.
    """

    def __init__(self, inner: Storage, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = inner.name

    def _call(self, fn: Callable[[], T]) -> T:
        if not self.breaker.allow():
            wait = self.breaker.seconds_until_retry()
            err = StorageError(
                ErrorCategory.TRANSIENT, f"storage circuit breaker is open; retry in {max(1, math.ceil(wait))}s"
            )
            err.breaker_open = True
            err.retry_after = wait
            raise err
        try:
            result = fn()
        except StorageError as exc:
            if exc.category == "transient":
                self.breaker.record_failure()
            elif exc.status is not None:
                self.breaker.record_success()  # the store answered
            else:
                self.breaker.record_neutral()  # refused locally (bad path, missing input): the store was not asked
            raise
        except BaseException:
            self.breaker.record_neutral()
            raise
        self.breaker.record_success()
        return result

    def put(self, path: str, file: pathlib.Path, content_type: str) -> None:
        self._call(lambda: self.inner.put(path, file, content_type))

    def signed_url(self, path: str, ttl_seconds: int) -> str:
        return self._call(lambda: self.inner.signed_url(path, ttl_seconds))

    def delete(self, paths: list[str]) -> None:
        self._call(lambda: self.inner.delete(paths))

    def check(self) -> None:
        self._call(self.inner.check)
