"""The worker's one HTTP port: /health, /metrics, /files (local downloads), /v1 and /openapi.json.

The supervisor builds an :class:`AppState`, calls :func:`build_app`, then
:func:`make_server` and runs ``await server.serve()`` as a task; it stops it with
``server.should_exit = True``. The server installs no signal handlers (the
supervisor owns SIGTERM/SIGINT), runs no lifespan and configures no logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import re
import socket
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from shared.config import HttpSettings
from supervisor.delivery.downloads import content_disposition, download_filename
from supervisor.http.health import health_report
from supervisor.http.jobs_api import JobsApi
from supervisor.http.limits import BoundedConfig, ContentLengthGuard
from supervisor.http.openapi import openapi_document, operation_routes
from supervisor.http.problems import TITLES, problem_response
from supervisor.http.schemas import json_response
from supervisor.http.state import AppState
from supervisor.queue.scrape import read_jobs_created
from supervisor.telemetry import error_reporting

log = logging.getLogger(__name__)

QUEUE_STATS_INTERVAL_SECONDS = 1.0
QUEUE_STATS_TIMEOUT_SECONDS = 1.0
# What a `?download=` name may be (payload.filename's own pattern, plus its extension).
DOWNLOAD_NAME = re.compile(r"^[\w.\- ]{1,110}$")
FILE_NAME_LOOKUP_SECONDS = 1.0

__all__ = ["AppState", "HttpServer", "HttpServerError", "build_app", "make_server"]


def build_app(state: AppState) -> ASGIApp:
    api = JobsApi(state)
    openapi = openapi_document()

    async def health(request: Request) -> Response:
        status, body = await health_report(state.health)
        return json_response(body, status, {"Cache-Control": "no-store"})

    async def metrics(request: Request) -> Response:
        await _refresh_queue_gauges(state)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return json_response(openapi)

    async def files(request: Request) -> Response:
        return await _serve_file(state, request)

    routes: list[BaseRoute] = [
        *operation_routes({"health": health, "metrics": metrics}),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/files/{path:path}", files, methods=["GET", "HEAD"]),
        *api.routes(),
    ]
    if state.settings.console.console_keys:  # the operator console, on the HTTP side's pool
        from supervisor.http.console import console_app

        console = console_app(state.settings, state.queue.pool, local=state.local_snapshot,
                              storage=state.storage)
        routes.append(Route("/console", _to_console_root, methods=["GET", "HEAD"]))
        routes.append(Mount("/console", console))
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    # No slash redirects: Starlette's point at an absolute URL built from the Host header
    # (http:// behind a TLS proxy), so `POST /v1/jobs/` would resend its token in clear text.
    app.router.redirect_slashes = False
    return ContentLengthGuard(app, state.settings.http.max_body_bytes)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = TITLES.get(exc.status_code, "Error")
    path = request.url.path
    detail = exc.detail if exc.detail and exc.detail != title else f"{request.method} {path}: {title}"
    if exc.status_code == 404 and len(path) > 1 and path.endswith("/"):
        detail += f" (no trailing slash: {path.rstrip('/')})"
    return problem_response(exc.status_code, detail, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    error_reporting.report_exception(exc)
    return problem_response(500, "an unexpected error occurred; it was logged")


async def _to_console_root(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)  # relative: whatever host and scheme the client used


async def _refresh_queue_gauges(state: AppState) -> None:
    """export_queue_depth, the oldest pending age and jobs created, from the database, at most once a second."""
    if time.monotonic() - state._stats_at < QUEUE_STATS_INTERVAL_SECONDS:
        return
    async with state._stats_lock:
        if time.monotonic() - state._stats_at < QUEUE_STATS_INTERVAL_SECONDS:
            return
        state._stats_at = time.monotonic()
        try:
            stats = await asyncio.wait_for(state.queue.stats(), QUEUE_STATS_TIMEOUT_SECONDS)
        except Exception as exc:  # a scrape must not fail because the database is down
            log.debug("queue stats unavailable for /metrics: %s", exc)
            return
        state.metrics.record_queue_stats(stats.get("pending", 0) or 0, stats.get("oldest_pending_seconds", 0.0) or 0.0)
        try:
            created = await asyncio.wait_for(read_jobs_created(state.queue.pool), QUEUE_STATS_TIMEOUT_SECONDS)
        except Exception as exc:  # as above: the scrape still answers
            log.debug("jobs created count unavailable for /metrics: %s", exc)
            return
        state.metrics.set_jobs_created(created)


def _forbidden(detail: str) -> Response:
    return problem_response(403, detail, slug="bad-link")


async def _serve_file(state: AppState, request: Request) -> Response:
    path: str = request.path_params["path"]
    if state.link_signer is None or state.files_root is None:
        return problem_response(404, "this worker does not serve local files")
    expires = request.query_params.get("expires")
    sig = request.query_params.get("sig")
    if not expires or not sig:
        return _forbidden("the link is not signed (expires and sig are required)")
    if not state.link_signer.verify(path, expires, sig):
        return _forbidden("the link is invalid or has expired")
    target = _resolve_inside(state.files_root, path)
    if target is None:
        return problem_response(404, "no such file")
    if not target.is_file():
        return problem_response(404, "the file no longer exists (deleted by retention?)")
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    try:
        remaining = max(0, int(expires) - int(time.time()))
    except ValueError:
        remaining = 0
    name = request.query_params.get("download") or await _stored_file_name(state, path, media_type)
    if not DOWNLOAD_NAME.fullmatch(name):
        return problem_response(422, "download must be a file name (letters, digits, . _ - and space)",
                                field="download", slug="invalid-request")
    return FileResponse(
        target,
        media_type=media_type,
        headers={"Cache-Control": f"private, max-age={remaining}", "X-Content-Type-Options": "nosniff",
                 "Content-Disposition": content_disposition(name)},
    )


async def _stored_file_name(state: AppState, path: str, media_type: str) -> str:
    """A link without ``?download=`` (a mail's, a console's): the job's own download name, looked up
    by the job id in the key ``{user_id}/{job_id}/{attempt}.{ext}``; the job id alone when the
    database does not answer in time (the file is still served)."""
    parts = path.split("/")  # older keys: {user_id}/{job_id}.{ext}
    job_id = parts[1] if len(parts) == 3 else parts[-1].rpartition(".")[0] or parts[-1]
    extension = path.rpartition(".")[2] or "pdf"
    try:
        row = await asyncio.wait_for(state.queue.get_job(job_id), FILE_NAME_LOOKUP_SECONDS)
    except Exception as exc:  # a malformed id, a database away: the file matters more than its name
        log.debug("no download name for %s: %s", path, exc)
        row = None
    if row is None:
        return download_filename(None, media_type, job_id, extension)
    return download_filename(row.get("payload"), row.get("content_type") or media_type, job_id, extension)


def _resolve_inside(root: Path, path: str) -> Path | None:
    """`path` under `root`, or None for anything that escapes it (.., absolute, symlinks out)."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or "\x00" in path:
        return None
    parts = path.split("/")
    if any(p in {"", ".", ".."} for p in parts):
        return None
    base = root.resolve()
    resolved = base.joinpath(*parts).resolve()
    if base not in resolved.parents:
        return None
    return resolved


# ---- the server ---------------------------------------------------------------------


class HttpServerError(RuntimeError):
    """The HTTP server could not start (port taken, ...)."""


class HttpServer(uvicorn.Server):
    """A uvicorn server for a task inside the supervisor: no signal handlers, no sys.exit.

    The socket is bound in :func:`make_server`, so a taken port fails there (an
    OSError) rather than inside the task; ``port`` is the bound port (useful with 0).
    """

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config)
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        # Run when the server has stopped (e.g. closing the HTTP side's database pool).
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    def begin_stop(self) -> None:
        """Stop accepting; open requests and streams get the graceful timeout (the TaskOwner awaits the end)."""
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's version replaces SIGINT/SIGTERM handlers; the supervisor owns them.
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets=sockets or [self.socket])
        except SystemExit as exc:  # uvicorn exits the process when startup fails
            raise HttpServerError(f"HTTP server failed to start on port {self.port}") from exc
        finally:
            with contextlib.suppress(OSError):
                self.socket.close()
            for stop in self.on_stop:
                try:
                    await stop()
                except Exception as exc:  # stopping must not hide why the server stopped
                    log.warning("HTTP side cleanup failed: %s", exc)


def make_server(
    app: ASGIApp,
    port: int,
    host: str = "0.0.0.0",
    *,
    access_log: bool = False,
    graceful_timeout_seconds: float = 3.0,
    limits: HttpSettings | None = None,
) -> HttpServer:
    """Bind ``host:port`` now and return the server; run it with ``await server.serve()``.

    Raises OSError when the port cannot be bound. Open SSE streams get
    `graceful_timeout_seconds` after ``should_exit`` before they are cut.
    `limits` bounds connections, backlog and the time a request may take.
    """
    limits = limits or HttpSettings()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(limits.http_backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    config = BoundedConfig(
        app,
        header_timeout=limits.http_header_timeout_seconds,
        body_timeout=limits.http_body_timeout_seconds,
        limit_concurrency=limits.http_max_connections,
        backlog=limits.http_backlog,
        timeout_keep_alive=limits.http_keep_alive_seconds,
        # X-Forwarded-For is believed only from FORWARDED_ALLOW_IPS (uvicorn's own default trusts loopback, which
        # a local proxy or tunnel makes every client); of the list it takes the right-most untrusted address.
        proxy_headers=bool(limits.forwarded_allow_ips),
        forwarded_allow_ips=[entry.strip() for entry in limits.forwarded_allow_ips] or None,
        host=host,
        port=sock.getsockname()[1],
        lifespan="off",
        log_config=None,
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(graceful_timeout_seconds)),
    )
    server = HttpServer(config, sock)
    log.info("HTTP listening on %s:%s", host, server.port)
    return server
