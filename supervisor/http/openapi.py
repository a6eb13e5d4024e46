"""The HTTP port's one table of operations: the OpenAPI 3.1 document and the routes.

OPERATIONS lists each path and method once; :func:`operation_routes` mounts a
handler on each, by operation id, and :func:`openapi_document` describes them.
Schemas come from msgspec (supervisor/http/schemas.py, shared/payload.py,
supervisor/http/problems.py); this module only says which struct each status answers with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.vocabulary import WebhookEvent
from supervisor.delivery.webhooks import WebhookBody
from supervisor.http.problems import PROBLEM_JSON, Problem
from supervisor.http.schemas import CancelResult, Health, Job, JobAccepted, JobCreate, StatusEvent

REF = "#/components/schemas/{name}"


@dataclass(frozen=True)
class Answer:
    description: str
    body: type | None = None  # a struct (JSON), None (no body)
    media: str = "application/json"
    headers: tuple[str, ...] = ()


def problem(description: str, *headers: str) -> Answer:
    return Answer(description, Problem, PROBLEM_JSON, headers)


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    op_id: str
    summary: str
    answers: dict[str, Answer]
    body: type | None = None
    public: bool = False  # no token needed
    job: bool = False  # takes {job_id} and ?user_id=, may be 404
    extra: dict[str, Any] = field(default_factory=dict)


TEXT = {"type": "string"}
AUTH_ANSWERS = {
    "401": problem("Missing, malformed, forged or expired token, or a role that is not accepted"),
    "403": problem("A user_id or subscriber flag that needs a trusted API key"),
    "503": problem("The worker's API database connections are all busy, or the signing keys cannot be fetched",
                   "Retry-After"),
}
HEADER_DOCS = {
    "Location": "The job's URL",
    "Retry-After": "Seconds to wait before trying again",
}

OPERATIONS = (
    Operation("/health", "get", "health", "Health of the worker (the seed's shape)",
              {"200": Answer("Healthy", Health), "503": Answer("Unhealthy", Health)}, public=True),
    Operation("/metrics", "get", "metrics", "Prometheus metrics",
              {"200": Answer("Prometheus text format", str, "text/plain")}, public=True),
    Operation("/v1/jobs", "post", "createJob", "Create an export job", {
        "202": Answer("Created and queued", JobAccepted, headers=("Location",)),
        "200": Answer("A repeat of an earlier request with the same idempotency_key", JobAccepted,
                      headers=("Location",)),
        "413": problem("The body is larger than MAX_BODY_BYTES"),
        "415": problem("The body is declared as something other than JSON (Content-Type)"),
        "422": problem("Invalid request; `field` names the offending input (e.g. payload.pdf.scale); "
                       "`idempotency_key` when the key was used before with a different request"),
        "429": problem("Over a per-user limit", "Retry-After"),
    }, body=JobCreate),
    Operation("/v1/jobs/{job_id}", "get", "getJob", "Get a job", {"200": Answer("The job", Job)}, job=True),
    Operation("/v1/jobs/{job_id}/events", "get", "jobEvents", "Live status (server-sent events)", {
        "200": Answer("`event: status`, `data: {id, status, attempts, cancel_requested}` (StatusEvent): the "
                      "current status first, then every change until a final status; `: keepalive` comments "
                      "every 15 s.", str, "text/event-stream"),
        "429": problem("Too many open event streams (for this user or on this worker)", "Retry-After"),
    }, job=True),
    Operation("/v1/jobs/{job_id}/download", "get", "download", "Download the file (redirect to a signed link)", {
        "302": Answer("Redirect to a signed, expiring link (named after payload.filename, else the menu, else the job)",
                      headers=("Location",)),
        "409": problem("The job is not completed"),
        "410": problem("The file was deleted by retention"),
    }, job=True),
    Operation("/v1/jobs/{job_id}/cancel", "post", "cancelJob", "Cancel a job", {
        "202": Answer("Cancelled (pending) or cancel requested (processing)", CancelResult),
        "409": problem("The job is already final"),
    }, job=True),
)


Endpoint = Callable[[Request], Awaitable[Response]]


def operation_routes(handlers: Mapping[str, Endpoint]) -> list[Route]:
    """A route for each operation in `handlers` (by operation id), at the table's path and method.

    A handler for an operation the table does not list is a programming error, raised
    at startup: every route the port serves is in the OpenAPI document.
    """
    unknown = set(handlers) - {op.op_id for op in OPERATIONS}
    if unknown:
        raise ValueError(f"handlers for operations the OpenAPI table does not list: {sorted(unknown)}")
    return [Route(op.path, handlers[op.op_id], methods=[op.method.upper()])
            for op in OPERATIONS if op.op_id in handlers]


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    """OpenAPI 3.1 for /health, /metrics and /v1."""
    structs = sorted(
        {a.body for op in OPERATIONS for a in op.answers.values() if isinstance(a.body, type) and a.body is not str}
        | {op.body for op in OPERATIONS if op.body is not None}
        | {StatusEvent, WebhookBody},
        key=lambda t: t.__name__,
    )
    refs, schemas = msgspec.json.schema_components(structs, ref_template=REF)
    ref_of = dict(zip(structs, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, ref_of)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "export-worker jobs API",
            "version": version,
            "description": "Create PDF/image exports, follow them, download the result. "
            "Bearer auth: a Supabase JWT (end users: their own jobs only, free tier) "
            "or an EXPORT_API_KEYS key (trusted backends: name user_id, may set subscriber).",
        },
        "paths": paths,
        "webhooks": {event.value: _webhook(event, ref_of[WebhookBody]) for event in WebhookEvent},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A Supabase JWT (HS256 or JWKS) or a trusted API key"},
            },
        },
        "security": [{"bearer": []}],
    }


def _operation(op: Operation, ref_of: dict[type, dict[str, Any]]) -> dict[str, Any]:
    answers = dict(op.answers)
    if not op.public:
        answers = {**answers, **{k: v for k, v in AUTH_ANSWERS.items() if k not in answers}}
    if op.job:
        answers.setdefault("404", problem("No such job (or not yours)"))
        answers.setdefault("422", problem("The user_id query parameter is not one UUID"))
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.op_id,
        "responses": {code: _answer(a, ref_of) for code, a in answers.items()},
    }
    if op.public:
        out["security"] = []
    if op.job:
        out["parameters"] = [
            {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
            {"name": "user_id", "in": "query", "required": False, "schema": {"type": "string", "format": "uuid"},
             "description": "Trusted callers: only find the job if it belongs to this user."},
        ]
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[op.body]}}}
    return out


def _answer(answer: Answer, ref_of: dict[type, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    if answer.body is not None:
        schema = TEXT if answer.body is str else ref_of[answer.body]
        out["content"] = {answer.media: {"schema": schema}}
    if answer.headers:
        out["headers"] = {
            name: {"schema": {"type": "integer"} if name == "Retry-After" else TEXT, "description": HEADER_DOCS[name]}
            for name in answer.headers
        }
    return out


WEBHOOK_HEADERS = {
    "webhook-id": "The delivery's id: the same on every retry of this job's event (de-duplicate on it)",
    "webhook-timestamp": "Unix seconds when this attempt was signed",
    "webhook-signature": "`v1,<base64 HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.{body}` with "
    "WEBHOOK_SECRET (Standard Webhooks)",
}
WEBHOOK_SUMMARY = {
    WebhookEvent.COMPLETED: "The job completed: data carries the signed file_url and its expiry",
    WebhookEvent.FAILED: "The job failed for good (no retry left): data carries error_category and error_message",
}


def _webhook(event: WebhookEvent, body_ref: dict[str, Any]) -> dict[str, Any]:
    """A job's webhook_url receives this POST (OpenAPI 3.1 `webhooks`)."""
    return {"post": {
        "summary": WEBHOOK_SUMMARY[event],
        "operationId": "webhook" + "".join(part.title() for part in event.value.split(".")),
        "parameters": [{"name": name, "in": "header", "required": True, "schema": TEXT, "description": text}
                       for name, text in WEBHOOK_HEADERS.items()],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_ref}}},
        "responses": {
            "2XX": {"description": "Delivered: never sent again"},
            "410": {"description": "Gone: this delivery is disabled, never sent again"},
            "default": {"description": "Anything else (or no answer within WEBHOOK_TIMEOUT_SECONDS): retried "
                                       "with exponential backoff and jitter for WEBHOOK_RETRY_PERIOD_SECONDS"},
        },
        "security": [],
    }}
