"""A job's page: a browser context made for one job, with one page, closed when the job ends.

Each job gets its own context (an incognito-like profile of its own): its cookies,
HTTP cache, storage, permissions, :visited history and downloads exist nowhere else
and end with it, so nothing is reused between jobs and nothing needs a reset.

The price, measured on this 2-core machine (load 13-15) beside a 24-item page that
prints in ~70 ms of CPU: the context ~21 ms of CPU, its page ~110 ms (a renderer
process of its own: contexts never share one), closing it ~38 ms. The old warm page
reset cost ~6 ms. Slots overlap that time with other jobs; they do not remove it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from playwright.async_api import Browser, BrowserContext, CDPSession, Page, Route

from render_child.procs import renderer_pids

DEFAULT_VIEWPORT = {"width": 1280, "height": 720}
CONTEXT_CLOSE_TIMEOUT_S = 10.0
LogFn = Callable[[str, str, str | None], None]
RouteFn = Callable[[Route], Awaitable[None]]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


@dataclass(eq=False)
class JobPage:
    """One job's context and page; ``crashed`` once its renderer process died."""

    context: BrowserContext
    page: Page
    renderer_pid: int = 0
    crashed: bool = False
    _cdp: CDPSession | None = None

    async def cdp(self) -> CDPSession:
        """A CDP session on the page, opened on first use (image jobs only: a PDF job needs none)."""
        if self._cdp is None:
            self._cdp = await self.context.new_cdp_session(self.page)
        return self._cdp


class Pages:
    """Opens and closes job pages on one browser, and tells which renderer draws each.

    A new page starts a renderer process of its own (contexts never share one), so the
    renderer that appeared while the page was made is the page's. Pages are made one at
    a time for that (a few ms each); the jobs then run at once.
    """

    def __init__(self, browser: Browser, browser_pid: int, log: LogFn) -> None:
        self.browser = browser
        self.browser_pid = browser_pid
        self.log = log
        self._opening = asyncio.Lock()
        self._owned: dict[int, JobPage] = {}  # renderer pid -> the page it draws

    async def open(self, *, js: bool, route: RouteFn) -> JobPage:
        context = await self.browser.new_context(
            java_script_enabled=js,
            viewport=DEFAULT_VIEWPORT,  # type: ignore[arg-type]
            accept_downloads=False,
            service_workers="block",
            bypass_csp=False,
        )
        try:
            context.set_default_timeout(30_000)
            await context.route("**/*", route)
            async with self._opening:  # only the page's birth: its renderer is the one that appears
                before = renderer_pids(self.browser_pid)
                page = await context.new_page()
                born = renderer_pids(self.browser_pid) - before
            job_page = JobPage(context=context, page=page)
        except BaseException:
            await self._close_context(context)
            raise
        self._attribute(job_page, born)

        def on_crash(_page: Page) -> None:
            job_page.crashed = True

        page.on("crash", on_crash)
        return job_page

    def recheck(self, job_page: JobPage) -> bool:
        """After a navigation: is the page's renderer still the one named? If its process
        went (a navigation to another site may move a page), name the one renderer nobody
        else owns, or none. True when the name changed."""
        now = renderer_pids(self.browser_pid)
        if job_page.renderer_pid in now:
            return False
        self._owned.pop(job_page.renderer_pid, None)
        job_page.renderer_pid = 0
        self._attribute(job_page, now - set(self._owned))
        return True

    def _attribute(self, job_page: JobPage, candidates: set[int]) -> None:
        if len(candidates) == 1:
            job_page.renderer_pid = candidates.pop()
            self._owned[job_page.renderer_pid] = job_page

    async def close(self, job_page: JobPage) -> None:
        """Close the job's context: its page, its renderer, every request still open."""
        self._owned.pop(job_page.renderer_pid, None)
        await self._close_context(job_page.context)

    async def _close_context(self, context: BrowserContext) -> None:
        try:
            await asyncio.wait_for(context.close(), CONTEXT_CLOSE_TIMEOUT_S)
        except Exception as exc:
            # the browser is gone or stuck: the child notices the disconnection and exits
            self.log("warning", f"closing a job's browser context failed: {first_line(exc)}", None)
