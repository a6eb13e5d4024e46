"""Every error answer of the HTTP port: ``application/problem+json`` (RFC 9457), built here only.

Handlers raise :class:`ApiProblem` (or :class:`supervisor.http.auth.AuthError`); the
route wrapper and the app's exception handlers turn them into responses with
:func:`problem_response`. ``field`` names the offending input on 422s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response

from supervisor.http.auth import AuthError

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(msgspec.Struct, omit_defaults=True, kw_only=True):
    """RFC 9457 problem details; `field` names the offending input on 422."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    limit: str | None = None
    max: int | None = None
    retry_after_seconds: int | None = None
    job_status: str | None = None


_encoder = msgspec.json.Encoder()
_SURROGATE = re.compile("[\ud800-\udfff]")


class ApiProblem(Exception):
    """Raised inside a handler; becomes an ``application/problem+json`` response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        slug: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.slug = slug
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> Response:
        problem = Problem(
            type=problem_type(self.slug),
            title=TITLES.get(self.status, "Error"),
            status=self.status,
            detail=self.detail,
            field=self.field,
        )
        body = msgspec.structs.replace(problem, **self.extra) if self.extra else problem
        return Response(_encoder.encode(_encodable(body)), status_code=self.status, headers=self.headers,
                        media_type=PROBLEM_JSON)


def _encodable(problem: Problem) -> Problem:
    """The problem with any unpaired surrogate (echoed from the caller's JSON keys) written as \\udXXX,
    which UTF-8 cannot encode."""
    if not any(isinstance(v, str) and _SURROGATE.search(v) for v in (problem.detail, problem.field)):
        return problem
    return msgspec.structs.replace(problem, detail=_escaped(problem.detail),
                                   field=None if problem.field is None else _escaped(problem.field))


def _escaped(text: str) -> str:
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def problem_type(slug: str | None) -> str:
    return f"urn:export-worker:problem:{slug}" if slug else "about:blank"


def problem_response(status: int, detail: str, **options: Any) -> Response:
    """A problem response at once (``options`` as for :class:`ApiProblem`)."""
    return ApiProblem(status, detail, **options).response()


def auth_problem(exc: AuthError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="export-worker"'} if exc.status == 401 else {}
    slug = {401: "unauthenticated", 403: "forbidden", 503: "auth-unavailable"}.get(exc.status)
    return problem_response(exc.status, exc.message, slug=slug, headers=headers)


def invalid(field: str, detail: str) -> ApiProblem:
    """A 422 naming the field (a dotted path such as ``payload.pdf.scale``; "" = the whole body)."""
    return ApiProblem(422, detail, field=field, slug="invalid-request")


def not_found(what: str = "job") -> ApiProblem:
    return ApiProblem(404, f"no such {what}", slug="not-found")


def unavailable(detail: str, *, slug: str, retry_after: int | None = None) -> ApiProblem:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return ApiProblem(503, detail, slug=slug, headers=headers)
