"""Errors to Sentry when SENTRY_DSN is set; with no DSN nothing is imported and nothing is sent.

What goes to Sentry (and nothing else: the logging integration is off, so a
``log.error`` about a user's bad request never becomes an event):

- unhandled errors of the supervisor: what escapes ``serve``, the event loop's
  exception handler, an HTTP request that raised (a 500), an uncaught thread error;
- failures of background tasks (every one goes through the TaskOwner);
- render failures that are not the user's fault: a child that crashed or stopped
  answering, a render failing for an internal (transient) reason. Validation,
  permanent, timeout and memory failures are the document's and are not sent.

Every event carries the worker id as a tag; job events also carry job_id,
export_type and attempt. ``scrub`` (the SDK's ``before_send``) removes what must
not leave the worker: request data, user data, local variables, breadcrumbs,
e-mail addresses, passwords in URLs, tokens and keys. Render events carry a fixed
message with the failure's reason code, never the child's message, so no
document content is sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

_sentry: Any = None  # the sentry_sdk module once init() enabled it

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.I)
_SECRET_PAIR = re.compile(
    r"\b(password|passwd|pwd|secret|token|api[_-]?key|apikey|authorization|service[_-]?role[_-]?key|sig|dsn)"
    r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;'\"]+)",
    re.I,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_DROPPED_KEYS = ("request", "user", "breadcrumbs", "extra")


def enabled() -> bool:
    return _sentry is not None


def init(dsn: str, worker_id: str, *, release: str = "", environment: str = "") -> bool:
    """Start the Sentry client when `dsn` is set; True when it did. Imports sentry_sdk only then."""
    global _sentry
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=dsn,
        release=release or None,
        environment=environment or None,
        send_default_pii=False,
        include_local_variables=False,  # a frame's locals can hold a payload, a key or an address
        max_breadcrumbs=0,
        auto_enabling_integrations=False,  # what is sent is chosen here, not by what happens to be installed
        disabled_integrations=[LoggingIntegration],  # log lines are not events (a user's bad input logs errors)
        before_send=scrub,  # type: ignore[arg-type]  # sentry's Event is a TypedDict of this dict
    )
    sentry_sdk.set_tag("worker_id", worker_id)
    _sentry = sentry_sdk
    log.info("errors are reported to Sentry")
    return True


def report_exception(exc: BaseException, *, task: str | None = None, **job: object) -> None:
    """An unhandled error or a background task's failure (`job`: job_id, export_type, attempt when known)."""
    if _sentry is None:
        return
    tags = _tags(job) | ({"task": task} if task else {})
    _sentry.capture_exception(exc, tags=tags)


def report_render_failure(reason: str, *, job_id: str, export_type: str, attempt: int, detail: str = "") -> None:
    """A render that failed for a reason that is not the document's (`reason`: a reason code, never content)."""
    if _sentry is None:
        return
    message = f"render failed: {reason}" + (f" ({detail})" if detail else "")
    _sentry.capture_message(
        message,
        level="error",
        tags=_tags({"job_id": job_id, "export_type": export_type, "attempt": attempt}) | {"failure_reason": reason},
        fingerprint=["render-failed", reason],
    )


def watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Send what reaches the event loop's exception handler (a callback or task error nobody awaited)."""
    if _sentry is None:
        return
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            report_exception(exc)
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def flush(timeout: float = 2.0) -> None:
    if _sentry is not None:
        _sentry.flush(timeout=timeout)


def scrub_text(text: str) -> str:
    text = _URL_USERINFO.sub(r"\1[redacted]@", text)
    text = _BEARER.sub(r"\1 [redacted]", text)
    text = _JWT.sub("[redacted]", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    return _EMAIL.sub("[email]", text)


def scrub(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """before_send: drop request, user, extras and breadcrumbs; scrub every remaining string."""
    for key in _DROPPED_KEYS:
        event.pop(key, None)
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    scrubbed: dict[str, Any] = _scrub_value(event)
    return scrubbed


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    return value


def _tags(job: dict[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in job.items() if value is not None}
