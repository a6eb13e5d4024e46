"""The bodies of the jobs API as msgspec Structs, and the one way a request body is decoded.

The OpenAPI document (supervisor/http/openapi.py) is generated from these structs, so
what is validated and what is published cannot drift apart. Field names are a
contract (DESIGN.md: extend, never rename).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
import msgspec.inspect
from starlette.responses import Response

from shared.payload import RenderPayload, payload_error, unstorable_string
from shared.vocabulary import ErrorCategory, ExportType, JobStatus, WebhookEvent, WebhookStatus
from supervisor.http.problems import ApiProblem, invalid

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class JobCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``POST /v1/jobs``."""

    export_type: ExportType
    payload: RenderPayload
    menu_id: UUID | None = None
    subscriber: Annotated[
        bool, msgspec.Meta(description="Trusted (API key) callers only; end users must omit it or send false.")
    ] = False
    idempotency_key: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=200, description="A repeat with the same key returns the same job (200)."
        ),
    ] | None = None
    email: Annotated[
        str,
        msgspec.Meta(
            pattern=EMAIL_PATTERN,
            max_length=320,
            description="Where to mail the result; when absent, payload.email (and on Supabase the user's address).",
        ),
    ] | None = None
    user_id: Annotated[
        UUID | None,
        msgspec.Meta(description="Required for trusted callers; end users may only name themselves."),
    ] = None
    webhook_url: Annotated[
        str,
        msgspec.Meta(
            max_length=2048,
            description="Called (signed, Standard Webhooks) on export.completed and on a final export.failed. "
            "https only; a host resolving to a private, loopback, link-local or metadata address is refused (422).",
        ),
    ] | None = None


class WebhookDelivery(msgspec.Struct, kw_only=True):
    """One webhook event of a job and where its delivery stands."""

    event: WebhookEvent
    webhook_id: Annotated[str, msgspec.Meta(description="The `webhook-id` header: the same on every retry.")]
    status: WebhookStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class JobLinks(msgspec.Struct, kw_only=True):
    self_: str = msgspec.field(name="self")
    events: str
    download: str
    cancel: str

    @classmethod
    def of(cls, job_id: str) -> JobLinks:
        base = f"/v1/jobs/{job_id}"
        return cls(self_=base, events=f"{base}/events", download=f"{base}/download", cancel=f"{base}/cancel")


class JobAccepted(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/jobs`` (202 new, 200 a repeat of an idempotency key)."""

    id: UUID
    status: JobStatus
    export_type: ExportType
    created_at: datetime | None
    links: JobLinks


class Job(msgspec.Struct, kw_only=True):
    """``GET /v1/jobs/{id}``."""

    id: UUID
    user_id: UUID
    menu_id: UUID | None
    status: JobStatus
    export_type: ExportType
    subscriber: bool
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    cancel_requested: bool
    error_category: ErrorCategory | None
    error_message: str | None
    file_size_bytes: int | None
    content_type: str | None
    download_url: Annotated[str | None, msgspec.Meta(description="A signed link, once completed.")]
    metadata: dict[str, Any]
    webhook_url: str | None = None
    webhooks: list[WebhookDelivery] = []
    links: JobLinks


class CancelResult(msgspec.Struct, kw_only=True):
    """``POST /v1/jobs/{id}/cancel``: cancelled, or processing with a cancel requested."""

    id: UUID
    status: JobStatus
    cancel_requested: bool
    links: JobLinks


class StatusEvent(msgspec.Struct, kw_only=True):
    """The data of each ``event: status`` on ``GET /v1/jobs/{id}/events``."""

    id: UUID
    status: JobStatus
    attempts: int
    cancel_requested: bool

    @classmethod
    def of(cls, row: dict[str, Any]) -> StatusEvent:
        """From a job row (``cancel_requested_at``) or a NOTIFY payload (``cancel_requested``)."""
        requested = row.get("cancel_requested", row.get("cancel_requested_at") is not None)
        return cls(id=UUID(str(row["id"])), status=JobStatus(row["status"]), attempts=int(row["attempts"]),
                   cancel_requested=bool(requested))


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def job_from_row(row: dict[str, Any], download_url: str | None) -> Job:
    job_id = str(row["id"])
    created = utc(row.get("created_at"))
    assert created is not None
    return Job(
        id=UUID(job_id),
        user_id=UUID(str(row["user_id"])),
        menu_id=UUID(str(row["menu_id"])) if row.get("menu_id") else None,
        status=JobStatus(row["status"]),
        export_type=ExportType(row["export_type"]),
        subscriber=bool(row.get("subscriber", False)),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=created,
        started_at=utc(row.get("started_at")),
        completed_at=utc(row.get("completed_at")),
        cancel_requested=row.get("cancel_requested_at") is not None,
        error_category=ErrorCategory(row["error_category"]) if row.get("error_category") else None,
        error_message=row.get("error_message"),
        file_size_bytes=row.get("file_size_bytes"),
        content_type=row.get("content_type"),
        download_url=download_url,
        metadata=row.get("metadata") or {},
        webhook_url=row.get("webhook_url"),
        webhooks=msgspec.convert(row.get("webhooks") or [], list[WebhookDelivery]),
        links=JobLinks.of(job_id),
    )


# ---- encoding and decoding ------------------------------------------------------------


def _enc_hook(value: Any) -> Any:
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(content), status_code=status, headers=headers or {}, media_type="application/json")


def schema_depth(info: msgspec.inspect.Type) -> int:
    """How deep JSON accepted as `info` can nest (objects and arrays); a schema with ``Any`` has no bound."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.Metadata):
        return schema_depth(info.type)
    if isinstance(info, inspect.StructType | inspect.TypedDictType | inspect.DataclassType):
        return 1 + max((schema_depth(f.type) for f in info.fields), default=0)
    if isinstance(info, inspect.ListType | inspect.SetType | inspect.FrozenSetType | inspect.VarTupleType):
        return 1 + schema_depth(info.item_type)
    if isinstance(info, inspect.TupleType):
        return 1 + max((schema_depth(t) for t in info.item_types), default=0)
    if isinstance(info, inspect.DictType):
        return 1 + schema_depth(info.value_type)
    if isinstance(info, inspect.UnionType):
        return max(schema_depth(t) for t in info.types)
    if isinstance(info, inspect.AnyType | inspect.RawType):
        raise TypeError("a field of type Any has no depth bound; decode_create relies on one")
    return 0


def nesting_depth(value: Any) -> int:
    """How deep `value` (decoded JSON: dicts, lists, scalars) nests."""
    if isinstance(value, dict):
        return 1 + max(map(nesting_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(nesting_depth, value), default=0)
    return 0


_create_decoder = msgspec.json.Decoder(JobCreate)
# Every struct of the body forbids unknown fields and none holds Any, so nothing the typed
# decoder accepts nests deeper than this (a handful of levels).
CREATE_BODY_DEPTH = schema_depth(msgspec.inspect.type_info(JobCreate))
# The stdlib parser that finds the field of an unstorable string re-reads the whole body:
# only small bodies get it (a 4 MB one would hold the event loop for a second).
LOOSE_PARSE_MAX_BYTES = 128 * 1024


def decode_create(raw: bytes, max_depth: int) -> JobCreate:
    """The body of a create request, or a 422 naming the field.

    The typed decoder (C, one pass) goes first: it stops at the first value the
    schema has no place for, so a body of a million '[' is refused after a few
    bytes, and no body it accepts nests deeper than CREATE_BODY_DEPTH. Nothing
    here scans a body more than once, so no request holds the event loop for
    more than a few milliseconds of CPU.
    """
    try:
        body = _create_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        problem = payload_error(exc, raw, JobCreate)
        raise invalid(problem.field, problem.message) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _undecodable(raw, exc) from None
    builtins: Any = None
    if max_depth < CREATE_BODY_DEPTH:
        builtins = msgspec.to_builtins(body)
        if nesting_depth(builtins) > max_depth:
            raise invalid("", f"the JSON nests deeper than {max_depth} levels (MAX_JSON_DEPTH)")
    # The decoder refuses raw NUL bytes and every unpaired surrogate, so the one unstorable
    # character a decoded body can hold is an escaped NUL.
    if b"\\u0000" in raw:
        hit = unstorable_string(builtins if builtins is not None else msgspec.to_builtins(body))
        if hit is not None:
            raise invalid(*hit)
    return body


def _undecodable(raw: bytes, exc: Exception) -> ApiProblem:
    """msgspec refuses unpaired surrogates without saying where; the stdlib parser finds the field."""
    not_json = ApiProblem(422, f"the request body is not valid JSON: {exc}", field="", slug="invalid-json")
    if len(raw) > LOOSE_PARSE_MAX_BYTES:
        return not_json
    try:
        loose = json.loads(raw)
    except (ValueError, RecursionError):
        return not_json
    hit = unstorable_string(loose)
    if hit is not None:
        return invalid(*hit)
    return not_json


class HealthCheck(msgspec.Struct, kw_only=True):
    healthy: bool
    message: str
    details: dict[str, Any] | None = None


class HealthChecks(msgspec.Struct, kw_only=True):
    database: HealthCheck
    storage: HealthCheck
    puppeteer: HealthCheck
    memory: HealthCheck


class Health(msgspec.Struct, kw_only=True):
    """``GET /health``: the seed's shape (supervisor/http/health.py builds it)."""

    status: Annotated[str, msgspec.Meta(pattern="^(healthy|unhealthy)$")]
    timestamp: datetime
    checks: HealthChecks
