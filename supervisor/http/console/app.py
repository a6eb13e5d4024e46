"""The operator console: a Starlette app of server-rendered pages (Jinja2, htmx), mounted at /console.

Every page needs a signed-in operator; every action is a POST that carries the
session's CSRF token, asks for confirmation first (a GET page with the form)
and is written to the audit log with the action itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import psycopg
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from shared.config import Settings, console_operators
from shared.vocabulary import ExportType, JobStatus
from supervisor.delivery.downloads import row_download_filename, with_download_name
from supervisor.delivery.links import Signs, download_link, has_file
from supervisor.http.console.access import COOKIE_NAME, Access, Session
from supervisor.http.console.actions import Actions
from supervisor.http.console.chart import throughput_svg
from supervisor.http.console.live import LiveStream, Watch
from supervisor.http.console.masking import mask_email, mask_text, mask_url, payload_summary
from supervisor.http.console.signin import SignIn
from supervisor.http.console.store import ConsoleStore, FilterError, JobFilter, PoolSource
from supervisor.http.console.web import (
    SECURITY_HEADERS,
    Pages,
    base,
    cross_origin,
    form,
    path_job_id,
    uuid_or_none,
)
from supervisor.http.console.workers_table import (
    LocalSnapshot as LocalSnapshot,  # re-exported for supervisor.http.console
)
from supervisor.http.console.workers_table import WorkersTable

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
Handler = Callable[[Request, Session], Awaitable[Response]]

SIGN_TIMEOUT_SECONDS = 10.0  # a store that does not sign within this is reported, not waited for


def _age(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _since(at: datetime | None) -> str:
    return "-" if at is None else _age((datetime.now(UTC) - at).total_seconds())


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def _when(at: datetime | str | None) -> str:
    if at is None:
        return "-"
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            return str(at)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(age=_age, since=_since, mib=_mib, when=_when, mask=mask_text, mask_email=mask_email,
                       mask_url=mask_url)
    for name in env.list_templates():  # compiled now, not during an operator's first page
        env.get_template(name)
    return env


class Console:
    """The console's parts and routes; the read-only pages live here, sign-in and actions beside it."""

    def __init__(
        self,
        settings: Settings,
        pool: PoolSource,
        *,
        local: LocalSnapshot | None = None,
        storage: Signs | None = None,
    ) -> None:
        console = settings.console
        self.settings = settings
        self.storage = storage  # signs a download link when an operator asks for the file
        self.access = Access(
            console_operators(console.console_keys),
            session_seconds=console.console_session_seconds,
            signin_limit_per_minute=console.console_signin_limit_per_minute,
        )
        self.store = ConsoleStore(pool, settings)
        self.workers_table = WorkersTable(self.store, console.console_worker_gone_seconds, local)
        self.env = templates()
        self.pages = Pages(self.env, self.access)
        self.live = LiveStream(self.store, self.env, interval=console.console_live_interval_ms / 1000)
        self.signin = SignIn(self.access, self.store, self.pages)
        self.actions = Actions(self.store, self.pages)

    # ---- plumbing ---------------------------------------------------------------

    def app(self) -> Starlette:
        page = self._guarded
        routes = [
            Route("/", page(self.overview), methods=["GET"]),
            Route("/login", self.signin.login, methods=["GET", "POST"]),
            Route("/logout", page(self.signin.logout), methods=["POST"]),
            Route("/workers", page(self.workers), methods=["GET"]),
            Route("/jobs", page(self.jobs), methods=["GET"]),
            Route("/jobs/{job_id}", page(self.job), methods=["GET"]),
            Route("/jobs/{job_id}/file", page(self.job_file), methods=["GET"]),
            Route("/jobs/{job_id}/{action:str}", page(self.actions.job_action), methods=["GET", "POST"]),
            Route("/actions", page(self.actions.actions), methods=["GET"]),
            Route("/actions/retry-failed", page(self.actions.retry_category), methods=["GET", "POST"]),
            Route("/live", page(self.live_stream), methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return Starlette(routes=routes)

    def _guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint for a page: a signed-in operator, a CSRF-checked same-origin POST, the database's outage."""

        async def endpoint(request: Request) -> Response:
            try:
                session = await self._session(request)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                return self.pages.database_unavailable(request, None, exc)
            if session is None:
                if request.url.path.endswith("/live"):
                    return Response("sign in first", 401, headers=SECURITY_HEADERS)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{base(request)}/login?{urlencode({'next': target})}", 303,
                                        headers=SECURITY_HEADERS)
            if request.method == "POST" and (cross_origin(request) or not await self._csrf_ok(request, session)):
                log.warning("console POST refused (CSRF token or origin)",
                            extra={"operator": session.operator, "path": request.url.path})
                return self.pages.error(request, session, 403, "Refused",
                                        "This form's CSRF token is missing or wrong, or it was sent from "
                                        "another site. Reload the page and try again.")
            try:
                response = await handler(request, session)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                return self.pages.database_unavailable(request, session, exc)
            response.headers.update(SECURITY_HEADERS)
            return response

        return endpoint

    async def _session(self, request: Request) -> Session | None:
        """The request's session; None without one, or for a cookie kept after its sign-out."""
        session = self.access.read_session(request.cookies.get(COOKIE_NAME))
        if session is not None and await self.store.signed_out(session.nonce):
            return None
        return session

    async def _csrf_ok(self, request: Request, session: Session) -> bool:
        token = (await form(request)).get("csrf") or request.headers.get("x-csrf-token")
        return self.access.csrf_ok(session, token)

    # ---- pages ----------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        counts = await self.store.counts()
        throughput = await self.store.throughput()
        oldest = await self.store.oldest_pending()
        workers = await self.workers_table.rows()
        live_workers = [w for w in workers if not w.gone]
        return self.pages.render(
            request, session, "overview.html", title="Overview", counts=counts, throughput=throughput,
            chart=throughput_svg(throughput), oldest=oldest, workers=live_workers,
            gone=len(workers) - len(live_workers),
        )

    async def workers(self, request: Request, session: Session) -> Response:
        return self.pages.render(request, session, "workers.html", title="Workers",
                                 workers=await self.workers_table.rows(), local_id=self.workers_table.local_id())

    async def jobs(self, request: Request, session: Session) -> Response:
        params = dict(request.query_params)
        error = ""
        try:
            flt = JobFilter.parse(params)
        except FilterError as exc:
            flt, error = JobFilter(), str(exc)
        rows, more = ([], False) if error else await self.store.jobs_page(flt)
        older = ""
        if more:
            last = rows[-1]
            older = urlencode(flt.query_params(before=f"{last['created_at'].isoformat()}_{last['id']}"))
        # htmx's filter form swaps the table alone; its history restore wants the whole page.
        fragment = request.headers.get("hx-request") and not request.headers.get("hx-history-restore-request")
        name = "_jobs_table.html" if fragment else "jobs.html"
        return self.pages.render(
            request, session, name, status=422 if error else 200, title="Jobs", rows=rows, older=older,
            error=error, params=params, statuses=list(JobStatus), types=list(ExportType),
            live_ids=",".join(str(r["id"]) for r in rows), tier=self.store.tier_name,
        )

    async def job(self, request: Request, session: Session) -> Response:
        job_id = path_job_id(request)
        row = await self.store.job(job_id) if job_id else None
        if row is None:
            return self.pages.error(request, session, 404, "Not found", f"No job {request.path_params['job_id']}.")
        return self.pages.render(
            request, session, "job.html", title=f"Job {row['id']}", job=row, timeline=_timeline(row),
            summary=payload_summary(row["payload"], row["export_type"]),
            blocked=list((row.get("metadata") or {}).get("blocked_requests") or []),
            done=request.query_params.get("done", ""), tier=self.store.tier_name,
        )

    async def job_file(self, request: Request, session: Session) -> Response:
        job_id = path_job_id(request)
        row = await self.store.job(job_id) if job_id else None
        if row is None or not has_file(row):
            return self.pages.error(request, session, 404, "No file",
                                    "This job has no file (not completed, or deleted by retention).")
        if self.storage is None:
            return self.pages.error(request, session, 503, "No file store",
                                    "This worker has no file store to sign a download link with.")
        # Signed now, for the file's whole life: a link stored at completion dies after
        # SIGNED_URL_TTL_SECONDS (7 days), the file lives 30.
        ttl = self.settings.storage.signed_url_ttl_seconds
        try:
            url = await asyncio.wait_for(
                asyncio.to_thread(download_link, self.storage, str(row["storage_path"]), ttl), SIGN_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("console could not sign a download link", extra={"job_id": str(job_id), "error": repr(exc)})
            return self.pages.error(request, session, 503, "File store unavailable",
                                    "The file store did not sign a download link; try again in a minute.")
        # The link itself is a bearer URL: it is only handed to a signed-in operator's browser.
        return RedirectResponse(with_download_name(url, row_download_filename(row)), 303)

    async def live_stream(self, request: Request, session: Session) -> Response:
        parts = request.query_params.get("rows", "").split(",")
        ids = [job_id for job_id in map(uuid_or_none, parts) if job_id is not None]
        watch = Watch(base=base(request), counts=request.query_params.get("counts") == "1", rows=ids,
                      job=uuid_or_none(request.query_params.get("job", "")))
        return StreamingResponse(
            self.live.events(request, watch),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )


def _timeline(job: dict[str, Any]) -> list[tuple[Any, str, str]]:
    """(when, what, detail) from created_at, error_history, started_at and completed_at, in order."""
    events: list[tuple[Any, str, str]] = [(job["created_at"], "created", f"priority {job['priority']}")]
    for entry in job.get("error_history") or []:
        events.append((entry.get("at"), f"attempt {entry.get('attempt', '?')} failed",
                       f"{entry.get('category', '?')} on {entry.get('worker_id') or '?'}: "
                       f"{mask_text(str(entry.get('message', '')))}"))
    if job.get("started_at") and job["status"] != JobStatus.PENDING:
        worker = job.get("worker_id")
        events.append((job["started_at"], f"attempt {job['attempts']} started", f"on {worker}" if worker else ""))
    if job.get("completed_at"):
        detail = mask_text(job.get("error_message")) if job["status"] != JobStatus.COMPLETED else (
            f"{job.get('file_size_bytes') or 0} bytes")
        events.append((job["completed_at"], str(job["status"]), detail))
    return sorted(events, key=lambda e: _sort_key(e[0]))


def _sort_key(at: Any) -> float:
    if isinstance(at, datetime):
        return at.timestamp()
    try:
        return datetime.fromisoformat(str(at)).timestamp()
    except ValueError:
        return math.inf
