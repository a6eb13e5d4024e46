"""One job's network: the route handler of the job's own context, and its accounting.

Every request of the job's page arrives here (the context's route), so a request is
counted to the job whose page made it: its fetches and blocked list are this job's
alone. Allowed requests are fetched through the policy's fetcher, concurrently (each
route is a task of its own), on the child's one shared client. Once the job has ended
(:meth:`JobNetwork.end`) every request is refused and counted nowhere.
"""

from __future__ import annotations

import contextlib

from playwright.async_api import ConsoleMessage, Request, Route
from playwright.async_api import Error as PlaywrightError

from render_child.netpolicy import Blocked, Fetcher, FetchFailed
from render_child.page import LogFn

_LOCAL_RESOURCE = "Not allowed to load local resource:"


class JobNetwork:
    def __init__(self, fetcher: Fetcher, log: LogFn, job_id: str) -> None:
        self.fetcher = fetcher
        self.log = log
        self.job_id = job_id
        self.expect_main_navigation = False  # a url source's own navigation, once
        self.ended = False

    def end(self) -> None:
        self.ended = True

    def on_console(self, message: ConsoleMessage) -> None:
        # Chromium refuses file: (and other local) URLs itself, before routing; record them too
        text = message.text
        if not self.ended and text.startswith(_LOCAL_RESOURCE):
            url = text[len(_LOCAL_RESOURCE) :].strip()
            scheme = url.split(":", 1)[0].lower()
            self.fetcher.record(url, f"scheme {scheme}: not allowed (refused by Chromium)")

    async def route(self, route: Route) -> None:
        request = route.request
        url = request.url
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("data", "blob", "about"):
            await route.fallback()
            return
        if self.ended or _from_a_gone_document(request):
            # a request after the job's end, or of a detached frame: refused, nobody's to count
            await _safe_abort(route, "blockedbyclient")
            return
        main_document = False
        if request.is_navigation_request() and request.frame.parent_frame is None:
            if not self.expect_main_navigation:
                # A 204 leaves the page on the job's document; an abort would put it on
                # Chromium's error page, where a later document.open() kills the browser.
                self.fetcher.record(url, "top-level navigation is not allowed")
                with contextlib.suppress(PlaywrightError):
                    await route.fulfill(status=204, body=b"")
                return
            self.expect_main_navigation = False
            main_document = True
        await self._fetch(route, request, url, scheme, main_document)

    async def _fetch(self, route: Route, request: Request, url: str, scheme: str, main_document: bool) -> None:
        fetcher = self.fetcher
        try:
            if scheme not in ("http", "https"):
                raise Blocked(f"scheme {scheme}: not allowed")
            fetcher.check_url(url, main_document=main_document)
            result = await fetcher.fetch_async(
                url, main_document=main_document, method=request.method, headers=request.headers
            )
        except Blocked as exc:
            fetcher.record(url, exc.reason)
            await _safe_abort(route, "blockedbyclient")
            return
        except FetchFailed as exc:
            if main_document:
                fetcher.record(url, f"fetch failed: {exc}")
            await _safe_abort(route, "failed")
            return
        except Exception as exc:
            self.log("warning", f"route handler error: {type(exc).__name__}: {exc}", self.job_id)
            await _safe_abort(route, "failed")
            return
        with contextlib.suppress(PlaywrightError):  # the page may have gone away meanwhile
            await route.fulfill(status=result.status, headers=result.headers, body=result.body)


def _from_a_gone_document(request: Request) -> bool:
    """A request whose frame is already detached: a subframe of a document that was replaced."""
    try:
        return request.frame.is_detached()
    except PlaywrightError:  # no frame at all (a worker): nothing of a live document
        return True


async def _safe_abort(route: Route, code: str) -> None:
    with contextlib.suppress(PlaywrightError):
        await route.abort(code)
