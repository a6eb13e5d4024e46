"""The jobs API under ``/v1`` (all need ``Authorization: Bearer <API key or Supabase JWT>``).

* ``POST /v1/jobs``: create. 202 + ``Location`` for a new job; 200 with the same
  job when ``idempotency_key`` was used before (``create_export_job`` says which);
  413 past ``MAX_BODY_BYTES``; 422 naming the field; 429 with ``Retry-After``.
  ``subscriber`` and ``user_id`` are for trusted (API key) callers: an end user's
  jobs are free-tier jobs of their own.
* ``GET /v1/jobs/{id}``: the job; ``download_url`` is a fresh signed link once completed.
* ``GET /v1/jobs/{id}/events``: server-sent status events (supervisor/http/events.py).
* ``GET /v1/jobs/{id}/download``: 302 to a signed link named like the document (downloads.py); 409 until completed.
* ``POST /v1/jobs/{id}/cancel``: 202 with the resulting status; 409 if already final.

An end user sees only their own jobs: anybody else's is a 404, like a missing one.
Bodies are the structs of supervisor/http/schemas.py; errors come from supervisor/http/problems.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import PoolTimeout, TooManyRequests
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from shared.payload import PayloadError, TestTemplateSource, check_payload, payload_to_builtins
from shared.vocabulary import FINAL_STATUSES, ExportType, JobStatus
from supervisor.delivery.downloads import row_download_filename, with_download_name
from supervisor.delivery.links import download_link
from supervisor.delivery.storage import StorageError
from supervisor.delivery.webhook_targets import refuse_unsafe
from supervisor.http.auth import AuthError, Principal, authenticate, needs_network
from supervisor.http.events import StatusPoller, StreamLimits, open_stream
from supervisor.http.limits import read_body
from supervisor.http.openapi import operation_routes
from supervisor.http.problems import ApiProblem, auth_problem, invalid, not_found, unavailable
from supervisor.http.schemas import (
    CancelResult,
    JobAccepted,
    JobCreate,
    JobLinks,
    decode_create,
    job_from_row,
    json_response,
    utc,
)
from supervisor.http.state import AppState
from supervisor.queue.listener import StatusFanout
from supervisor.queue.store import InvalidJob, LimitExceeded

log = logging.getLogger(__name__)

SIGN_TIMEOUT_SECONDS = 10.0
DB_BUSY_RETRY_AFTER_SECONDS = 1

Handler = Callable[[Request], Awaitable[Response]]


def guarded(state: AppState, fn: Handler) -> Handler:
    """Every failure a caller can cause becomes a problem response, never a 500."""

    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except AuthError as exc:
            return auth_problem(exc)
        except ApiProblem as exc:
            return exc.response()
        except ClientDisconnect:
            log.info("client went away before sending the whole request", extra={"path": request.url.path})
            return Response(status_code=400)  # nobody is there to read it
        except (PoolTimeout, TooManyRequests) as exc:
            if state.database is not None:
                state.database.failed(exc)  # counted as pool_exhausted; /health tells busy from broken
            return unavailable(
                "all of the API's database connections are busy; try again shortly",
                slug="busy",
                retry_after=DB_BUSY_RETRY_AFTER_SECONDS,
            ).response()
        except psycopg.OperationalError as exc:
            log.warning("database unavailable for %s %s: %s", request.method, request.url.path, exc)
            if state.database is not None:
                state.database.failed(exc)
            return unavailable("the database is unavailable", slug="database-unavailable", retry_after=5).response()

    endpoint.__name__ = fn.__name__
    return endpoint


class JobsApi:
    def __init__(self, state: AppState) -> None:
        self.state = state
        http = state.settings.http
        if state.streams is None:
            state.streams = StreamLimits(http.max_event_streams, http.max_event_streams_per_user)
        self.streams = state.streams
        listener: StatusFanout | None = state.listener
        self.feed = listener if listener is not None else StatusPoller(state.queue, metrics=state.metrics)

    def routes(self) -> list[Route]:
        """The /v1 routes, at the paths and methods of the OpenAPI table (supervisor/http/openapi.py)."""
        handlers = {
            "createJob": self.create_job,
            "getJob": self.get_job,
            "jobEvents": self.job_events,
            "download": self.download,
            "cancelJob": self.cancel,
        }
        return operation_routes({op_id: guarded(self.state, handler) for op_id, handler in handlers.items()})

    # -- helpers --

    async def principal(self, request: Request) -> Principal:
        api = self.state.settings.api
        if needs_network(api):
            return await asyncio.to_thread(authenticate, request.headers, api)
        return authenticate(request.headers, api)

    async def visible_job(self, request: Request, principal: Principal, job_id: str) -> dict[str, Any]:
        """The job if this caller may see it; 404 otherwise (never 403)."""
        requested = _query_user_id(request)
        owner = principal.acting_for(requested) if requested is not None else principal.user_id
        row = await self.state.queue.get_job(job_id)
        if row is None:
            raise not_found()
        if owner is not None and not _same_uuid(owner, row["user_id"]):
            raise not_found()
        return row

    async def signed_url(self, row: dict[str, Any]) -> str:
        storage = self.state.storage
        if storage is None:
            raise unavailable("no file storage is configured on this worker", slug="storage-unavailable")
        path = row.get("storage_path")
        if not path or row.get("file_deleted_at") is not None:
            raise ApiProblem(410, "the file of this job was deleted (retention) or never stored", slug="file-gone")
        ttl = self.state.settings.storage.signed_url_ttl_seconds
        try:
            signing = asyncio.to_thread(download_link, storage, str(path), ttl)
            url = await asyncio.wait_for(signing, SIGN_TIMEOUT_SECONDS)
        except TimeoutError:
            raise unavailable(
                "the file store did not answer in time", slug="storage-unavailable", retry_after=30
            ) from None
        except Exception as exc:
            retry = exc.retry_after if isinstance(exc, StorageError) else None  # set while the breaker is open
            raise unavailable(
                f"cannot sign a download link: {exc}",
                slug="storage-unavailable",
                retry_after=max(1, int(retry)) if retry is not None else None,
            ) from None
        return str(url)

    # -- POST /v1/jobs --

    async def create_job(self, request: Request) -> Response:
        principal = await self.principal(request)
        settings = self.state.settings
        _require_json(request)
        body = decode_create(await read_body(request, settings.http.max_body_bytes), settings.http.max_json_depth)
        requested_user = str(body.user_id) if body.user_id is not None else None
        if principal.trusted:
            if requested_user is None:
                raise invalid("user_id", "user_id is required with an API key: the user the job is for")
        elif body.subscriber:
            raise AuthError(403, "only a trusted API key may create subscriber jobs; end users' jobs are free-tier")
        user_id = principal.acting_for(requested_user)
        assert user_id is not None
        self._check_payload(body)
        row = await self._insert(body, user_id)
        job_id = str(row["id"])
        created = bool(row.get("created", True))  # the creation function decides: one owner
        if created:
            self.state.metrics.jobs_created.labels(body.export_type.value).inc()
        else:
            _same_request_or_refuse(body, row)
        accepted = JobAccepted(
            id=UUID(job_id),
            status=JobStatus(row["status"]),
            export_type=ExportType(row["export_type"]),
            created_at=utc(row.get("created_at")),
            links=JobLinks.of(job_id),
        )
        return json_response(accepted, 202 if created else 200, {"Location": f"/v1/jobs/{job_id}"})

    async def _insert(self, body: JobCreate, user_id: str) -> dict[str, Any]:
        """The new (or idempotently repeated) job row; a refusal as the problem the caller sees."""
        settings = self.state.settings
        if body.webhook_url is not None:
            refused = await refuse_unsafe(body.webhook_url, settings)
            if refused is not None:
                raise invalid("webhook_url", f"webhook_url is refused: {refused}")
        try:
            return await self.state.queue.create_job(
                user_id=user_id,
                export_type=body.export_type.value,
                payload=payload_to_builtins(body.payload),
                menu_id=str(body.menu_id) if body.menu_id is not None else None,
                subscriber=body.subscriber,
                idempotency_key=body.idempotency_key,
                recipient=body.email,
                webhook_url=body.webhook_url,
            )
        except LimitExceeded as exc:
            raise ApiProblem(
                429,
                exc.message,
                slug="limit-exceeded",
                headers={"Retry-After": str(max(1, exc.retry_after_seconds))},
                extra={"limit": exc.limit, "max": exc.maximum, "retry_after_seconds": exc.retry_after_seconds},
            ) from None
        except InvalidJob as exc:
            raise invalid(exc.field or "payload", exc.message) from None

    def _check_payload(self, body: JobCreate) -> None:
        render = self.state.settings.render
        try:
            check_payload(
                body.payload,
                body.export_type.value,
                max_input_bytes=render.max_input_bytes,
                allowed_url_hosts=render.allowed_url_hosts,
            )
        except PayloadError as exc:
            raise invalid("payload." + exc.field if exc.field else "payload", exc.message) from None
        if isinstance(body.payload.source, TestTemplateSource) and not render.allow_test_templates:
            raise invalid("payload.source.kind", "test-template sources are only accepted by test workers")

    # -- GET /v1/jobs/{id} --

    async def get_job(self, request: Request) -> Response:
        principal = await self.principal(request)
        row = await self.visible_job(request, principal, _path_job_id(request))
        download_url: str | None = None
        if row["status"] == JobStatus.COMPLETED and self.state.storage is not None and row.get("storage_path"):
            with contextlib.suppress(ApiProblem):
                download_url = await self.signed_url(row)
        return json_response(job_from_row(row, download_url))

    # -- GET /v1/jobs/{id}/download --

    async def download(self, request: Request) -> Response:
        principal = await self.principal(request)
        row = await self.visible_job(request, principal, _path_job_id(request))
        if row["status"] != JobStatus.COMPLETED:
            raise ApiProblem(
                409,
                f"the job is {row['status']}, not completed; nothing to download yet",
                slug="not-completed",
                extra={"job_status": row["status"]},
            )
        url = with_download_name(await self.signed_url(row), row_download_filename(row))
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    # -- POST /v1/jobs/{id}/cancel --

    async def cancel(self, request: Request) -> Response:
        principal = await self.principal(request)
        row = await self.visible_job(request, principal, _path_job_id(request))
        job_id = str(row["id"])
        if row["status"] in FINAL_STATUSES:
            raise _already_final(row["status"])
        result = await self.state.queue.cancel(job_id, None if principal.trusted else principal.user_id)
        if result is None:
            latest = await self.state.queue.get_job(job_id)
            raise _already_final(latest["status"] if latest else "gone")
        cancelled = CancelResult(
            id=UUID(job_id),
            status=JobStatus(result),
            cancel_requested=result == JobStatus.PROCESSING,
            links=JobLinks.of(job_id),
        )
        return json_response(cancelled, 202)

    # -- GET /v1/jobs/{id}/events --

    async def job_events(self, request: Request) -> Response:
        principal = await self.principal(request)
        job_id = _path_job_id(request)
        updates = self.feed.watch(job_id)  # before the row is read: no change can fall between
        try:
            row = await self.visible_job(request, principal, job_id)
        except BaseException:
            self.feed.unwatch(job_id, updates)
            raise
        return open_stream(row, self.feed, updates, self.streams, self.state.sse_keepalive_seconds)


def _already_final(status: str) -> ApiProblem:
    return ApiProblem(409, f"the job is already {status}", slug="already-final", extra={"job_status": status})


JSON_MEDIA_TYPES = ("application/json",)


def _require_json(request: Request) -> None:
    """A body declared as anything but JSON is a 415 (no Content-Type at all is read as JSON)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.partition(";")[0].strip().lower()
    if media in JSON_MEDIA_TYPES or (media.startswith("application/") and media.endswith("+json")):
        return
    raise ApiProblem(415, f"the body must be JSON (Content-Type: application/json), not {media or '(empty)'!r}",
                     slug="unsupported-media-type")


def _query_user_id(request: Request) -> str | None:
    """``?user_id=``, a UUID given at most once, or None; anything else is a 422 naming it."""
    values = request.query_params.getlist("user_id")
    if not values:
        return None
    if len(values) > 1:
        raise invalid("user_id", "user_id is given more than once")
    try:
        return str(UUID(values[0]))
    except ValueError:
        raise invalid("user_id", "user_id must be a UUID") from None


def _same_request_or_refuse(body: JobCreate, row: dict[str, Any]) -> None:
    """A repeated idempotency_key must come with the request that first used it: else a 422, not
    somebody else's job passed off as this request's (the stored job is left as it is)."""
    differs = [
        name
        for name, asked, stored in (
            ("export_type", body.export_type.value, row.get("export_type")),
            ("payload", payload_to_builtins(body.payload), row.get("payload")),
            ("menu_id", str(body.menu_id) if body.menu_id else None,
             str(row["menu_id"]) if row.get("menu_id") else None),
            ("subscriber", body.subscriber, bool(row.get("subscriber"))),
            ("email", body.email, row.get("notify_email") if body.email is not None else None),
            ("webhook_url", body.webhook_url, row.get("webhook_url") if body.webhook_url is not None else None),
        )
        if asked != stored
    ]
    if differs:
        raise ApiProblem(
            422,
            f"idempotency_key was already used for job {row['id']} with a different {', '.join(differs)}; "
            "send the same request to get that job, or use a new key",
            field="idempotency_key",
            slug="idempotency-key-reused",
        )


def _path_job_id(request: Request) -> str:
    try:
        return str(UUID(request.path_params["job_id"]))
    except ValueError:
        raise not_found() from None


def _same_uuid(a: str, b: Any) -> bool:
    try:
        return UUID(str(a)) == UUID(str(b))
    except ValueError:
        return False
