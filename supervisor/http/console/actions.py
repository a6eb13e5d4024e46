"""The console's actions: retry or cancel one job, retry every failed job of a category.

Each is a GET that shows a confirmation form and a POST (CSRF-checked by the page
guard) that acts, logs the operator and the outcome, and is audited by the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from shared.vocabulary import ErrorCategory
from supervisor.http.console.access import Session
from supervisor.http.console.store import ConsoleStore
from supervisor.http.console.web import Pages, base, form, path_job_id

log = logging.getLogger(__name__)

JOB_ACTIONS = ("retry", "cancel")


@dataclass(frozen=True)
class Actions:
    store: ConsoleStore
    pages: Pages

    async def job_action(self, request: Request, session: Session) -> Response:
        action = request.path_params["action"]
        job_id = path_job_id(request)
        if action not in JOB_ACTIONS or job_id is None:
            return self.pages.error(request, session, 404, "Not found", "No such page.")
        row = await self.store.job(job_id)
        if row is None:
            return self.pages.error(request, session, 404, "Not found", f"No job {job_id}.")
        if request.method == "GET":
            return self.pages.render(request, session, "confirm.html", title=f"{action.title()} job?", job=row,
                                     action=action, action_url=f"{base(request)}/jobs/{job_id}/{action}",
                                     back=f"{base(request)}/jobs/{job_id}")
        if action == "retry":
            result = await self.store.retry_job(job_id, session.operator)
        else:
            result = await self.store.cancel_job(job_id, session.operator)
        log.info("console action", extra={"operator": session.operator, "action": action, "job_id": str(job_id),
                                          "outcome": result.outcome})
        if not result.ok:
            return self.pages.error(request, session, 409, "Not done", result.outcome)
        return RedirectResponse(f"{base(request)}/jobs/{job_id}?{urlencode({'done': result.outcome})}", 303)

    async def actions(self, request: Request, session: Session) -> Response:
        return self.pages.render(request, session, "actions.html", title="Actions",
                                 failed=await self.store.failed_by_category(), audit=await self.store.recent_audit(),
                                 done=request.query_params.get("done", ""))

    async def retry_category(self, request: Request, session: Session) -> Response:
        source = await form(request) if request.method == "POST" else dict(request.query_params)
        try:
            category = ErrorCategory(source.get("category", ""))
        except ValueError:
            return self.pages.error(request, session, 422, "Bad category",
                                    f"category must be one of {', '.join(c.value for c in ErrorCategory)}.")
        if request.method == "GET":
            failed = {r["category"]: r["jobs"] for r in await self.store.failed_by_category()}
            return self.pages.render(request, session, "confirm.html", title="Retry failed jobs?", job=None,
                                     action="retry-category", category=category, count=failed.get(category, 0),
                                     action_url=f"{base(request)}/actions/retry-failed",
                                     back=f"{base(request)}/actions")
        result = await self.store.retry_category(category, session.operator)
        log.info("console action", extra={"operator": session.operator, "action": "retry_failed_category",
                                          "category": str(category), "affected": result.affected})
        return RedirectResponse(f"{base(request)}/actions?{urlencode({'done': result.outcome})}", 303)
