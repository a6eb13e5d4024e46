"""The jobs API under ``/v1`` and its OpenAPI document.

Endpoints (all need ``Authorization: Bearer <API key or Supabase JWT>``):

* ``POST /v1/jobs``: create. 202 + ``Location`` for a new job; 200 with the same
  job when ``idempotency_key`` was used before; 422 naming the field; 429 with
  ``Retry-After`` over a limit. ``subscriber`` and ``user_id`` are for trusted
  (API key) callers: an end user's jobs are always free-tier jobs of their own
  (``subscriber: true`` from an end user is a 403, and so is a ``user_id`` that
  is not theirs).
* ``GET /v1/jobs/{id}``: the job. ``download_url`` is a fresh signed link once completed.
* ``GET /v1/jobs/{id}/events``: server-sent events: ``event: status`` with the
  current status first, then every change, until a final status.
* ``GET /v1/jobs/{id}/download``: 302 to a signed link; 409 until completed.
* ``POST /v1/jobs/{id}/cancel``: 202 with the resulting status; 409 if already final.

An end user sees only their own jobs: anybody else's is a 404, like a missing one.
Errors are ``application/problem+json`` (RFC 9457) with ``field`` on 422s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from shared.payload import PayloadError, RenderPayload, parse_payload, payload_to_builtins
from supervisor.auth import AuthError, Principal, authenticate, needs_network
from supervisor.queue import InvalidJob, LimitExceeded

if TYPE_CHECKING:
    from supervisor.http_app import AppState

PROBLEM_JSON = "application/problem+json"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
SIGN_TIMEOUT_SECONDS = 10.0
POLL_FALLBACK_SECONDS = 1.0
CREATE_FIELDS = ("export_type", "payload", "menu_id", "subscriber", "idempotency_key", "email", "user_id")

_encoder = msgspec.json.Encoder()


# ---- responses -------------------------------------------------------------------


class ApiProblem(Exception):
    """Raised inside a handler; becomes an ``application/problem+json`` response."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        slug: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.slug = slug
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_type(slug: str | None) -> str:
    return f"urn:export-worker:problem:{slug}" if slug else "about:blank"


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    slug: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": problem_type(slug), "title": title, "status": status, "detail": detail}
    if field is not None:
        body["field"] = field
    body.update(extra or {})
    return Response(
        _encoder.encode(body), status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON
    )


def _problem_from(exc: ApiProblem) -> Response:
    return problem_response(
        exc.status,
        exc.title,
        exc.detail,
        field=exc.field,
        slug=exc.slug,
        headers=exc.headers,
        extra=exc.extra,
    )


def _auth_problem(exc: AuthError) -> Response:
    titles = {401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}
    headers = {"WWW-Authenticate": 'Bearer realm="export-worker"'} if exc.status == 401 else {}
    slug = {401: "unauthenticated", 403: "forbidden", 503: "auth-unavailable"}.get(exc.status)
    return problem_response(
        exc.status, titles.get(exc.status, "Error"), exc.message, slug=slug, headers=headers
    )


def json_response(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(content),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def not_found(what: str = "job") -> ApiProblem:
    return ApiProblem(404, "Not Found", f"no such {what}", slug="not-found")


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(fn: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except AuthError as exc:
            return _auth_problem(exc)
        except ApiProblem as exc:
            return _problem_from(exc)

    endpoint.__name__ = fn.__name__
    return endpoint


# ---- the API ---------------------------------------------------------------------


class JobsApi:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/v1/jobs", _guarded(self.create_job), methods=["POST"]),
            Route("/v1/jobs/{job_id}", _guarded(self.get_job), methods=["GET"]),
            Route("/v1/jobs/{job_id}/events", _guarded(self.job_events), methods=["GET"]),
            Route("/v1/jobs/{job_id}/download", _guarded(self.download), methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", _guarded(self.cancel), methods=["POST"]),
        ]

    # -- helpers --

    async def principal(self, request: Request) -> Principal:
        api = self.state.settings.api
        if needs_network(api):
            return await asyncio.to_thread(authenticate, request.headers, api)
        return authenticate(request.headers, api)

    async def visible_job(self, request: Request, principal: Principal) -> dict[str, Any]:
        """The job in the path if this caller may see it; 404 otherwise (never 403)."""
        raw = request.path_params["job_id"]
        try:
            job_id = str(UUID(raw))
        except ValueError:
            raise not_found() from None
        requested = request.query_params.get("user_id")
        owner = principal.acting_for(requested) if requested is not None else principal.user_id
        row = await self.state.queue.get_job(job_id)
        if row is None:
            raise not_found()
        if owner is not None and not _same_uuid(owner, row["user_id"]):
            raise not_found()
        return row

    def links(self, job_id: str) -> dict[str, str]:
        base = f"/v1/jobs/{job_id}"
        return {
            "self": base,
            "events": f"{base}/events",
            "download": f"{base}/download",
            "cancel": f"{base}/cancel",
        }

    async def signed_url(self, row: dict[str, Any]) -> str:
        storage = self.state.storage
        if storage is None:
            raise ApiProblem(
                503,
                "Service Unavailable",
                "no file storage is configured on this worker",
                slug="storage-unavailable",
            )
        path = row.get("storage_path")
        if not path or row.get("file_deleted_at") is not None:
            raise ApiProblem(
                410, "Gone", "the file of this job was deleted (retention) or never stored", slug="file-gone"
            )
        ttl = self.state.settings.storage.signed_url_ttl_seconds
        try:
            url = await asyncio.wait_for(
                asyncio.to_thread(storage.signed_url, str(path), ttl), SIGN_TIMEOUT_SECONDS
            )
        except TimeoutError:
            raise ApiProblem(
                503,
                "Service Unavailable",
                "the file store did not answer in time",
                slug="storage-unavailable",
                headers={"Retry-After": "30"},
            ) from None
        except Exception as exc:
            retry = getattr(exc, "retry_after", None)
            headers = {"Retry-After": str(max(1, int(retry)))} if isinstance(retry, int | float) else {}
            raise ApiProblem(
                503,
                "Service Unavailable",
                f"cannot sign a download link: {exc}",
                slug="storage-unavailable",
                headers=headers,
            ) from None
        return str(url)

    async def job_json(self, row: dict[str, Any]) -> dict[str, Any]:
        job_id = str(row["id"])
        download_url: str | None = None
        if row["status"] == "completed" and self.state.storage is not None and row.get("storage_path"):
            with contextlib.suppress(ApiProblem):
                download_url = await self.signed_url(row)
        return {
            "id": job_id,
            "user_id": str(row["user_id"]),
            "menu_id": str(row["menu_id"]) if row.get("menu_id") else None,
            "status": row["status"],
            "export_type": row["export_type"],
            "subscriber": bool(row.get("subscriber", False)),
            "attempts": row["attempts"],
            "max_attempts": row["max_attempts"],
            "created_at": iso(row.get("created_at")),
            "started_at": iso(row.get("started_at")),
            "completed_at": iso(row.get("completed_at")),
            "cancel_requested": row.get("cancel_requested_at") is not None,
            "error_category": row.get("error_category"),
            "error_message": row.get("error_message"),
            "file_size_bytes": row.get("file_size_bytes"),
            "content_type": row.get("content_type"),
            "download_url": download_url,
            "metadata": row.get("metadata") or {},
            "links": self.links(job_id),
        }

    # -- POST /v1/jobs --

    async def create_job(self, request: Request) -> Response:
        principal = await self.principal(request)
        body = await _json_object(request)
        unknown = sorted(set(body) - set(CREATE_FIELDS))
        if unknown:
            raise _invalid(unknown[0], f"unknown field {unknown[0]!r}; allowed: {', '.join(CREATE_FIELDS)}")
        export_type = body.get("export_type")
        if not isinstance(export_type, str):
            raise _invalid("export_type", "export_type is required: 'pdf' or 'image'")
        if "payload" not in body:
            raise _invalid("payload", "payload is required (the render request: source and options)")
        menu_id = _optional_str(body, "menu_id")
        idempotency_key = _optional_str(body, "idempotency_key")
        email = _optional_str(body, "email")
        requested_user = _optional_str(body, "user_id")
        subscriber = body.get("subscriber", False)
        if not isinstance(subscriber, bool):
            raise _invalid("subscriber", "subscriber must be true or false")

        if principal.trusted:
            if requested_user is None:
                raise _invalid("user_id", "user_id is required with an API key: the user the job is for")
        elif subscriber:
            raise AuthError(
                403, "only a trusted API key may create subscriber jobs; end users' jobs are free-tier"
            )
        user_id = principal.acting_for(requested_user)
        assert user_id is not None
        _require_uuid(user_id, "user_id")
        if menu_id is not None:
            _require_uuid(menu_id, "menu_id")

        render = self.state.settings.render
        try:
            parsed = parse_payload(body["payload"], export_type, max_input_bytes=render.max_input_bytes)
        except PayloadError as exc:
            field = (
                exc.field
                if exc.field == "export_type"
                else ("payload." + exc.field if exc.field else "payload")
            )
            raise _invalid(field, exc.message) from None
        if parsed.source.__struct_config__.tag == "test-template" and not render.allow_test_templates:
            raise _invalid("payload.source.kind", "test-template sources are only accepted by test workers")
        payload = payload_to_builtins(parsed)
        notify = email if email is not None else parsed.email

        existing = await self._idempotent_existing(user_id, idempotency_key)
        try:
            row = await self.state.queue.create_job(
                user_id=user_id,
                export_type=export_type,
                payload=payload,
                menu_id=menu_id,
                subscriber=subscriber,
                idempotency_key=idempotency_key,
                email=notify,
            )
        except LimitExceeded as exc:
            raise ApiProblem(
                429,
                "Too Many Requests",
                exc.message,
                slug="limit-exceeded",
                headers={"Retry-After": str(max(1, exc.retry_after_seconds))},
                extra={
                    "limit": exc.limit,
                    "max": exc.maximum,
                    "retry_after_seconds": exc.retry_after_seconds,
                },
            ) from None
        except InvalidJob as exc:
            raise _invalid(exc.field or "payload", exc.message) from None
        job_id = str(row["id"])
        repeat = existing is not None and existing == job_id
        if not repeat:
            self.state.metrics.jobs_created.labels(export_type).inc()
        content = {
            "id": job_id,
            "status": row["status"],
            "export_type": row["export_type"],
            "created_at": iso(row.get("created_at")),
            "links": self.links(job_id),
        }
        return json_response(content, 200 if repeat else 202, {"Location": f"/v1/jobs/{job_id}"})

    async def _idempotent_existing(self, user_id: str, key: str | None) -> str | None:
        """The id of the job this user already made with `key` (then the create is a repeat)."""
        if key is None:
            return None
        async with self.state.queue.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM export_jobs WHERE user_id = %s AND idempotency_key = %s", (user_id, key)
            )
            found = await cur.fetchone()
        return None if found is None else str(found[0])

    # -- GET /v1/jobs/{id} --

    async def get_job(self, request: Request) -> Response:
        principal = await self.principal(request)
        row = await self.visible_job(request, principal)
        return json_response(await self.job_json(row))

    # -- GET /v1/jobs/{id}/download --

    async def download(self, request: Request) -> Response:
        principal = await self.principal(request)
        row = await self.visible_job(request, principal)
        if row["status"] != "completed":
            raise ApiProblem(
                409,
                "Conflict",
                f"the job is {row['status']}, not completed; nothing to download yet",
                slug="not-completed",
                extra={"job_status": row["status"]},
            )
        url = await self.signed_url(row)
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    # -- POST /v1/jobs/{id}/cancel --

    async def cancel(self, request: Request) -> Response:
        principal = await self.principal(request)
        row = await self.visible_job(request, principal)
        job_id = str(row["id"])
        if row["status"] in FINAL_STATUSES:
            raise ApiProblem(
                409,
                "Conflict",
                f"the job is already {row['status']}",
                slug="already-final",
                extra={"job_status": row["status"]},
            )
        result = await self.state.queue.cancel(job_id, None if principal.trusted else principal.user_id)
        if result is None:
            latest = await self.state.queue.get_job(job_id)
            status = latest["status"] if latest else "gone"
            raise ApiProblem(
                409,
                "Conflict",
                f"the job is already {status}",
                slug="already-final",
                extra={"job_status": status},
            )
        return json_response(
            {
                "id": job_id,
                "status": result,
                "cancel_requested": result == "processing",
                "links": self.links(job_id),
            },
            202,
        )

    # -- GET /v1/jobs/{id}/events --

    async def job_events(self, request: Request) -> Response:
        principal = await self.principal(request)
        row = await self.visible_job(request, principal)
        return StreamingResponse(
            self._event_stream(str(row["id"])),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _event_stream(self, job_id: str) -> AsyncIterator[bytes]:
        """Subscribe first, then read the row: no change can fall between the two."""
        keepalive = self.state.sse_keepalive_seconds
        listener = self.state.listener
        updates = listener.subscribe() if listener is not None else None
        last: tuple[Any, ...] | None = None

        def event(data: dict[str, Any]) -> bytes | None:
            nonlocal last
            key = (data["status"], data["attempts"], data["cancel_requested"])
            if key == last:
                return None
            last = key
            return b"event: status\ndata: " + _encoder.encode(data) + b"\n\n"

        try:
            row = await self.state.queue.get_job(job_id)
            if row is None:
                return
            yield b"retry: 3000\n\n"
            first = event(_status_data(row))
            if first:
                yield first
            if row["status"] in FINAL_STATUSES:
                return
            deadline = time.monotonic() + keepalive
            while True:
                data: dict[str, Any] | None = None
                wait = max(0.0, deadline - time.monotonic())
                if updates is not None:
                    message: dict[str, Any] | None = None
                    with contextlib.suppress(TimeoutError):
                        message = await asyncio.wait_for(updates.get(), wait)
                    if message is not None:
                        if str(message.get("id")) != job_id:
                            continue
                        data = {
                            "id": job_id,
                            "status": message.get("status"),
                            "attempts": message.get("attempts"),
                            "cancel_requested": bool(message.get("cancel_requested", False)),
                        }
                else:  # no LISTEN connection (e.g. behind a transaction pooler): poll
                    await asyncio.sleep(min(wait, POLL_FALLBACK_SECONDS))
                    latest = await self.state.queue.get_job(job_id)
                    if latest is None:
                        return
                    data = _status_data(latest)
                if time.monotonic() >= deadline:
                    yield b": keepalive\n\n"
                    deadline = time.monotonic() + keepalive
                    if data is None:  # a notification may have been lost (LISTEN reconnect): look
                        latest = await self.state.queue.get_job(job_id)
                        if latest is None:
                            return
                        data = _status_data(latest)
                if data is None:
                    continue
                out = event(data)
                if out:
                    yield out
                if data["status"] in FINAL_STATUSES:
                    return
        finally:
            if updates is not None and listener is not None:
                listener.unsubscribe(updates)


def _status_data(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "attempts": row["attempts"],
        "cancel_requested": row.get("cancel_requested_at") is not None,
    }


def _same_uuid(a: str, b: Any) -> bool:
    try:
        return UUID(str(a)) == UUID(str(b))
    except ValueError:
        return False


def _invalid(field: str, detail: str) -> ApiProblem:
    return ApiProblem(422, "Unprocessable Content", detail, field=field, slug="invalid-request")


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _invalid(name, f"{name} must be a string")


def _require_uuid(value: str, field: str) -> None:
    try:
        UUID(value)
    except ValueError:
        raise _invalid(field, f"{field} is not a UUID: {value!r}") from None


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiProblem(
            422, "Unprocessable Content", "the request body is not valid JSON", field="", slug="invalid-json"
        ) from None
    if not isinstance(data, dict):
        raise ApiProblem(
            422,
            "Unprocessable Content",
            "the request body must be a JSON object",
            field="",
            slug="invalid-json",
        )
    return data


# ---- OpenAPI -----------------------------------------------------------------------


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    """OpenAPI 3.1 for /health, /metrics and /v1; the payload schema comes from msgspec."""
    (payload_ref,), components = msgspec.json.schema_components(
        [RenderPayload], ref_template="#/components/schemas/{name}"
    )
    uuid_str = {"type": "string", "format": "uuid"}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    links = {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("self", "events", "download", "cancel")},
        "required": ["self", "events", "download", "cancel"],
    }
    status_enum = {"type": "string", "enum": list(STATUSES)}
    ours: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details; `field` names the offending input on 422.",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "field": {"type": "string"},
                "limit": {"type": "string"},
                "max": {"type": "integer"},
                "retry_after_seconds": {"type": "integer"},
                "job_status": {"type": "string"},
            },
            "required": ["type", "title", "status", "detail"],
        },
        "JobCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["export_type", "payload"],
            "properties": {
                "export_type": {"type": "string", "enum": ["pdf", "image"]},
                "payload": payload_ref,
                "menu_id": {"type": ["string", "null"], "format": "uuid"},
                "subscriber": {
                    "type": "boolean",
                    "default": False,
                    "description": "Trusted (API key) callers only; end users must omit it or send false.",
                },
                "idempotency_key": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "maxLength": 200,
                    "description": "A repeat with the same key returns the same job (200).",
                },
                "email": {"type": ["string", "null"], "description": "Where to mail the result."},
                "user_id": {
                    "type": ["string", "null"],
                    "format": "uuid",
                    "description": "Required for trusted callers; end users may only name themselves.",
                },
            },
        },
        "JobAccepted": {
            "type": "object",
            "required": ["id", "status", "links"],
            "properties": {
                "id": uuid_str,
                "status": status_enum,
                "export_type": {"type": "string"},
                "created_at": nullable_time,
                "links": links,
            },
        },
        "Job": {
            "type": "object",
            "required": ["id", "status", "export_type", "attempts", "max_attempts", "created_at"],
            "properties": {
                "id": uuid_str,
                "user_id": uuid_str,
                "menu_id": {"type": ["string", "null"], "format": "uuid"},
                "status": status_enum,
                "export_type": {"type": "string", "enum": ["pdf", "image"]},
                "subscriber": {"type": "boolean"},
                "attempts": {"type": "integer"},
                "max_attempts": {"type": "integer"},
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": nullable_time,
                "completed_at": nullable_time,
                "cancel_requested": {"type": "boolean"},
                "error_category": {
                    "type": ["string", "null"],
                    "enum": ["transient", "permanent", "resource", "validation", None],
                },
                "error_message": {"type": ["string", "null"]},
                "file_size_bytes": {"type": ["integer", "null"]},
                "content_type": {"type": ["string", "null"]},
                "download_url": {"type": ["string", "null"], "description": "A signed link, once completed."},
                "metadata": {"type": "object"},
                "links": links,
            },
        },
        "CancelResult": {
            "type": "object",
            "required": ["id", "status", "cancel_requested"],
            "properties": {
                "id": uuid_str,
                "status": {
                    "type": "string",
                    "enum": ["cancelled", "processing"],
                    "description": "cancelled, or processing with a cancel requested",
                },
                "cancel_requested": {"type": "boolean"},
                "links": links,
            },
        },
        "HealthCheck": {
            "type": "object",
            "required": ["healthy", "message"],
            "properties": {
                "healthy": {"type": "boolean"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "timestamp", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "checks": {
                    "type": "object",
                    "required": ["database", "storage", "puppeteer", "memory"],
                    "properties": {
                        k: {"$ref": "#/components/schemas/HealthCheck"}
                        for k in ("database", "storage", "puppeteer", "memory")
                    },
                },
            },
        },
    }
    clash = set(ours) & set(components)
    if clash:
        raise RuntimeError(f"OpenAPI schema names clash with the payload schema: {sorted(clash)}")
    schemas = {**components, **ours}

    job_id_param = {"name": "job_id", "in": "path", "required": True, "schema": uuid_str}
    user_param = {
        "name": "user_id",
        "in": "query",
        "required": False,
        "schema": uuid_str,
        "description": "Trusted callers: only find the job if it belongs to this user.",
    }
    common = {
        "401": _problem("Missing, malformed, forged or expired token"),
        "403": _problem("A user_id or subscriber flag that needs a trusted API key"),
    }
    job_params = [job_id_param, user_param]

    def job_op(summary: str, op_id: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {
            "summary": summary,
            "operationId": op_id,
            "parameters": job_params,
            "responses": {**responses, **common, "404": _problem("No such job (or not yours)")},
        }

    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Health of the worker (the seed's shape)",
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Healthy",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    },
                    "503": {
                        "description": "Unhealthy",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/jobs": {
            "post": {
                "summary": "Create an export job",
                "operationId": "createJob",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}}},
                },
                "responses": {
                    "202": {
                        "description": "Created and queued",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}
                        },
                    },
                    "200": {
                        "description": "A repeat of an earlier request with the same idempotency_key",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}
                        },
                    },
                    **common,
                    "422": _problem(
                        "Invalid request; `field` names the offending input (e.g. payload.pdf.scale)"
                    ),
                    "429": {**_problem("Over a per-user limit"), "headers": retry_after},
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": job_op(
                "Get a job",
                "getJob",
                {
                    "200": {
                        "description": "The job",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
                    },
                },
            )
        },
        "/v1/jobs/{job_id}/events": {
            "get": job_op(
                "Live status (server-sent events)",
                "jobEvents",
                {
                    "200": {
                        "description": "`event: status`, `data: {id, status, attempts, cancel_requested}`: "
                        "the current status first, then every change until a final status; "
                        "`: keepalive` comments every 15 s.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                },
            )
        },
        "/v1/jobs/{job_id}/download": {
            "get": job_op(
                "Download the file (redirect to a signed link)",
                "download",
                {
                    "302": {
                        "description": "Redirect to a signed, expiring link",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    "409": _problem("The job is not completed"),
                    "410": _problem("The file was deleted by retention"),
                    "503": _problem("The file store is unavailable"),
                },
            )
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": job_op(
                "Cancel a job",
                "cancelJob",
                {
                    "202": {
                        "description": "Cancelled (pending) or cancel requested (processing)",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/CancelResult"}}
                        },
                    },
                    "409": _problem("The job is already final"),
                },
            )
        },
    }
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
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A Supabase JWT (HS256 or JWKS) or a trusted API key",
                },
            },
        },
        "security": [{"bearer": []}],
    }
