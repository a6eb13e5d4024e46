"""The worker's one vocabulary: every status, category, reason and level as an enum.

StrEnum members are their string values, so they go into SQL, JSON and log lines
as-is and compare equal to the strings the database hands back.
"""

from __future__ import annotations

import logging
from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class ErrorCategory(StrEnum):
    """What the queue does with a failed attempt: retry (transient, resource) or fail now."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    RESOURCE = "resource"
    VALIDATION = "validation"

    @property
    def retryable(self) -> bool:
        return self in (ErrorCategory.TRANSIENT, ErrorCategory.RESOURCE)


class ExportType(StrEnum):
    PDF = "pdf"
    IMAGE = "image"


class KillReason(StrEnum):
    """Why the pool stopped a child; stored with a failure as its reason code."""

    MEMORY = "memory"  # the child's tree passed CHILD_MEMORY_LIMIT_MB
    CONTAINER_MEMORY = "container_memory"  # the container passed its critical mark
    TIMEOUT = "timeout"  # the render passed JOB_TIMEOUT_SECONDS
    CANCELLED = "cancelled"  # the job was cancelled mid-render
    CLAIM_LOST = "claim_lost"  # another worker holds the job now
    SHUTDOWN = "shutdown"  # the worker is stopping; the job goes back to pending
    RECYCLE = "recycle"  # renders or age limit reached
    BOOT_FAILED = "boot_failed"  # Chromium did not start in time
    CRASHED = "crashed"  # the child or its browser died on its own
    UNRESPONSIVE = "unresponsive"  # the child ignored a stop request


class LogLevel(StrEnum):
    """The one log-level table: LOG_LEVEL, the supervisor's log lines and the children's.

    "warn" (the seed's spelling, and what lines carry) and "warning" are one level.
    """

    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    WARNING = "warning"
    ERROR = "error"

    @property
    def number(self) -> int:
        """The standard library's number for this level."""
        return _LOG_NUMBERS[self]

    @classmethod
    def number_of(cls, name: str) -> int:
        """The number for a level name in any case; info for a name it does not know."""
        try:
            return cls(name.lower()).number
        except ValueError:
            return logging.INFO

    @classmethod
    def for_number(cls, levelno: int) -> LogLevel:
        """The name a log line carries for a record's number (critical counts as error)."""
        for level in (cls.ERROR, cls.WARN, cls.INFO):
            if levelno >= level.number:
                return level
        return cls.DEBUG


_LOG_NUMBERS: dict[LogLevel, int] = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


class OutputFormat(StrEnum):
    """The file formats a render produces; the content type and extension live here only."""

    PDF = "pdf"
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @classmethod
    def from_content_type(cls, content_type: str) -> OutputFormat:
        for fmt, known in _CONTENT_TYPES.items():
            if known == content_type:
                return fmt
        raise ValueError(f"unknown content type {content_type!r}")


_CONTENT_TYPES: dict[OutputFormat, str] = {
    OutputFormat.PDF: "application/pdf",
    OutputFormat.PNG: "image/png",
    OutputFormat.JPEG: "image/jpeg",
    OutputFormat.WEBP: "image/webp",
}


class FailureReason(StrEnum):
    """Why an attempt failed, as a code kept with the failure (``metadata.failure_reason``).

    Mails and the console turn the code into plain words; nothing parses messages.
    """

    RENDER = "render"  # the page itself could not be rendered (the child said why)
    INVALID_PAYLOAD = "invalid_payload"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CONTAINER_MEMORY = "container_memory"
    CHILD_CRASHED = "child_crashed"
    STORAGE = "storage"
    STALE = "stale"  # the claiming worker stopped heartbeating


class RenderFailure(StrEnum):
    """Why a child could not render a job: the code on ``RenderFailed`` (kept as
    ``metadata.render_failure``), so no reader parses the child's message back."""

    TIMEOUT = "timeout"  # loading or printing passed the job's navigation timeout
    CRASHED = "crashed"  # the page's renderer process died (or was killed)
    BROWSER = "browser"  # any other browser error
    PAGE_LIMIT = "page_limit"  # more pages than MAX_PAGES
    PIXEL_LIMIT = "pixel_limit"  # a larger image than MAX_IMAGE_PIXELS
    OUTPUT_LIMIT = "output_limit"  # a larger file than MAX_OUTPUT_BYTES
    URL_NOT_ALLOWED = "url_not_allowed"  # the url source's host or address is refused by the policy
    URL_UNREACHABLE = "url_unreachable"  # the url source could not be fetched
    URL_HTTP_ERROR = "url_http_error"  # the url source answered 4xx or 5xx
    INVALID_JOB = "invalid_job"  # an export type or source this worker does not render
    INTERNAL = "internal"  # anything else: a fault of ours, not of the document


class WebhookEvent(StrEnum):
    """The events a job's webhook receives (the body's ``type``)."""

    COMPLETED = "export.completed"
    FAILED = "export.failed"  # only when the failure is final


class WebhookStatus(StrEnum):
    """Where one webhook delivery stands (the job's ``webhooks[].status``)."""

    PENDING = "pending"  # not sent yet, or retrying
    DELIVERED = "delivered"  # the receiver answered 2xx
    DISABLED = "disabled"  # the receiver answered 410 Gone
    FAILED = "failed"  # given up: the retry period ended, or the target became unsafe


class DeliveryOutcome(StrEnum):
    """How one outbox delivery attempt ended, mail or webhook (``export_webhook_deliveries_total``'s outcome)."""

    DELIVERED = "delivered"  # 2xx
    DISABLED = "disabled"  # 410 Gone
    RETRY = "retry"  # anything else; tried again later
    FAILED = "failed"  # given up


class ChildDeath(StrEnum):
    """Why a render child's process ended, as ``export_child_deaths_total`` counts it (every death once)."""

    CRASHED = "crashed"  # died on its own, or its pipe broke (a SIGKILL from outside, a segfault)
    MEMORY = "memory"  # killed over CHILD_MEMORY_LIMIT_MB or the container's critical mark
    DEADLINE = "deadline"  # killed past JOB_TIMEOUT_SECONDS
    RECYCLED = "recycled"  # retired after RENDERS_PER_CHILD or CHILD_MAX_AGE_SECONDS
    BOOT_FAILURE = "boot_failure"  # Chromium or the canary did not start
    STOPPED = "stopped"  # the supervisor stopped it: shutdown, cancel, a lost claim, ignoring Stop


class RecycleReason(StrEnum):
    """Why a child was retired and replaced (``export_child_recycles_total``)."""

    RENDERS = "renders"  # RENDERS_PER_CHILD reached
    AGE = "age"  # CHILD_MAX_AGE_SECONDS reached
    MEMORY = "memory"  # its browser, driver or own process grew (not a page: those are stopped alone)


class StorageOperation(StrEnum):
    """A storage call whose failure ``export_storage_errors_total`` counts."""

    UPLOAD = "upload"


class QueueOperation(StrEnum):
    """A queue write of this worker whose failure ``export_queue_errors_total`` counts."""

    CLAIM = "claim"  # claiming jobs for idle children
    SETTLE = "settle"  # completing, failing, deferring or releasing a claimed job


class DatabaseErrorCause(StrEnum):
    """Why a database operation failed (label `cause` of export_database_errors_total; /health names it)."""

    REFUSED = "refused"  # nothing listens, or the host is unreachable
    AUTHENTICATION = "authentication"  # wrong password, unknown role, not allowed by pg_hba
    POOL_EXHAUSTED = "pool_exhausted"  # no connection free in time (ours or the pooler's)
    PROTOCOL = "protocol"  # the server (or a pooler) answered something the client did not expect
    TIMEOUT = "timeout"  # a statement or a connect attempt ran out of time
    OTHER = "other"


class DatabaseEndpoint(StrEnum):
    """What DATABASE_URL reaches (detected at start, or DATABASE_MODE)."""

    DIRECT = "direct"
    SESSION = "session"  # a pooler in session mode: one server connection per client connection
    TRANSACTION = "transaction"  # a pooler in transaction mode: LISTEN and session state do not work


class DatabaseMode(StrEnum):
    """DATABASE_MODE: what the operator says DATABASE_URL reaches, or AUTO to detect it at start."""

    AUTO = "auto"
    DIRECT = "direct"
    SESSION = "session"
    TRANSACTION = "transaction"

    @property
    def forced_endpoint(self) -> DatabaseEndpoint | None:
        """The endpoint this mode names; None for AUTO (detected)."""
        return None if self is DatabaseMode.AUTO else DatabaseEndpoint(self.value)


class ChromiumHeadless(StrEnum):
    """CHROMIUM_HEADLESS: which of Chromium's two headless browsers renders.

    SHELL is the headless shell (Debian's ``chromium-headless-shell``, Puppeteer's
    ``headless: 'shell'``): the content layer without the full browser's tabs, profile
    services and UI, at about half the CPU per job. NEW is the full browser run headless.
    """

    SHELL = "shell"
    NEW = "new"
