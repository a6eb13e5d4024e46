"""Signing in and out of the console: operator keys, the session cookie, the sign-in rate limit."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from supervisor.http.console.access import COOKIE_NAME, Access, Session
from supervisor.http.console.store import ConsoleStore
from supervisor.http.console.web import SECURITY_HEADERS, Pages, base, cross_origin, form, https

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignIn:
    access: Access
    store: ConsoleStore
    pages: Pages

    async def login(self, request: Request) -> Response:
        root = base(request)
        target = request.query_params.get("next", "")
        if not target.startswith(f"{root}/") or target.startswith("//"):
            target = f"{root}/"
        if request.method == "GET":
            return self._page(request, target)
        if cross_origin(request):  # no signing in from another site's form
            return self._page(request, target, 403, "Sign in from this page.")
        client = request.client.host if request.client else "unknown"
        wait = self.access.signin_wait(client)
        if wait > 0:
            response = self._page(request, target, 429,
                                  f"Too many sign-in attempts; try again in {math.ceil(wait)} s.")
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        operator = self.access.operator_for((await form(request)).get("key", ""))
        if operator is None:
            log.warning("console sign-in refused", extra={"client": client})
            return self._page(request, target, 401, "That key is not an operator key.")
        _, cookie = self.access.new_session(operator)
        log.info("console sign-in", extra={"operator": operator, "client": client})
        redirect = RedirectResponse(target, 303, headers=SECURITY_HEADERS)
        redirect.set_cookie(
            COOKIE_NAME, cookie, max_age=self.access.session_seconds, path=root or "/",
            httponly=True, samesite="strict", secure=https(request),
        )
        return redirect

    def _page(self, request: Request, target: str, status: int = 200, error: str = "") -> Response:
        return self.pages.render(request, None, "login.html", status=status, title="Sign in", next=target,
                                 error=error)

    async def logout(self, request: Request, session: Session) -> Response:
        await self.store.sign_out(session.nonce, session.operator, session.expires)
        log.info("console sign-out", extra={"operator": session.operator})
        response = RedirectResponse(f"{base(request)}/login", 303)
        response.delete_cookie(COOKIE_NAME, path=base(request) or "/", httponly=True, samesite="strict",
                               secure=https(request))
        return response
