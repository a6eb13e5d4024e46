"""What every console handler shares: the page renderer, the security headers and the request helpers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from supervisor.http.console.access import Access, Session

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make form POSTs send `Origin: null`
}


@dataclass(frozen=True)
class Pages:
    """Renders a console page with what every page shows: the operator, the CSRF token, the base path."""

    env: jinja2.Environment
    access: Access

    def render(self, request: Request, session: Session | None, name: str, *, status: int = 200,
               **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            base=base(request),
            operator=session.operator if session else None,
            csrf=self.access.csrf_token(session) if session else "",
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status, headers=SECURITY_HEADERS)

    def error(self, request: Request, session: Session | None, status: int, title: str, message: str) -> Response:
        return self.render(request, session, "error.html", status=status, title=title, message=message)

    def database_unavailable(self, request: Request, session: Session | None, exc: Exception) -> Response:
        log.warning("console: database unavailable", extra={"error": str(exc)})
        return self.error(request, session, 503, "Database unavailable",
                          "The database is not answering; this page will work again when it does.")


def base(request: Request) -> str:
    """The path the console is mounted at, without a trailing slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def cross_origin(request: Request) -> bool:
    """A browser POST from another origin (browsers send Origin on POSTs; other clients may not)."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc != request.headers.get("host", "")


def https(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def uuid_or_none(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def path_job_id(request: Request) -> UUID | None:
    return uuid_or_none(request.path_params["job_id"])


async def form(request: Request) -> dict[str, str]:
    """An urlencoded body, first value of each field (no multipart: the console posts nothing else)."""
    body = await request.body()
    if len(body) > 65_536:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}
