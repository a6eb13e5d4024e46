"""The renderer: one job at a time per call, many calls at once, each in its own context.

A job's page lives in a browser context made for it and closed before its answer
leaves (:mod:`render_child.page`): nothing of a finished job runs, fetches or is
visible later, and nothing of one job is visible to another running beside it. The
network is never Chromium's own: every request of the job's context goes through
its :class:`~render_child.network.JobNetwork` and the policy. Printing and capturing
are in :mod:`render_child.output`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.async_api import Browser
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

from render_child.netpolicy import Blocked, Fetcher
from render_child.network import JobNetwork
from render_child.output import CONTENT_TYPES, render_image, render_pdf
from render_child.page import JobPage, LogFn, Pages, first_line
from render_child.templates import TEST_TEMPLATES, render_menu_html
from shared.errors import ErrorCategory, JobError
from shared.messages import Rendered, RenderFailed, RenderJob, Started
from shared.payload import HtmlSource, MenuSource, TestTemplateSource, UrlSource
from shared.vocabulary import RenderFailure

_EXPORT_TYPES = ("pdf", "image")


def _classify(exc: BaseException, job_page: JobPage | None) -> tuple[ErrorCategory, RenderFailure, str]:
    if job_page is not None and job_page.crashed and not isinstance(exc, JobError):
        return ErrorCategory.TRANSIENT, RenderFailure.CRASHED, f"renderer crashed: {first_line(exc)}"
    if isinstance(exc, JobError):
        return exc.category, exc.code, exc.message
    if isinstance(exc, PlaywrightTimeout):
        return ErrorCategory.TRANSIENT, RenderFailure.TIMEOUT, f"render timed out: {first_line(exc)}"
    if isinstance(exc, PlaywrightError):
        return ErrorCategory.TRANSIENT, RenderFailure.BROWSER, f"browser error: {first_line(exc)}"
    return ErrorCategory.TRANSIENT, RenderFailure.INTERNAL, f"{type(exc).__name__}: {exc}"


def _check_job(job: RenderJob) -> None:
    if isinstance(job.payload.source, TestTemplateSource) and not job.allow_test_templates:
        raise JobError(ErrorCategory.VALIDATION, "test templates are not allowed on this worker",
                       RenderFailure.INVALID_JOB)
    if job.export_type not in _EXPORT_TYPES:
        raise JobError(ErrorCategory.VALIDATION, f"unknown export_type {job.export_type!r}", RenderFailure.INVALID_JOB)


class Renderer:
    def __init__(
        self, browser: Browser, browser_pid: int, log: LogFn, client: httpx.AsyncClient,
        announce: Callable[[Started], None],
    ) -> None:
        self.log = log
        self.client = client
        self.announce = announce
        self.pages = Pages(browser, browser_pid, log)

    async def render(self, job: RenderJob) -> Rendered | RenderFailed:
        """Render one job in a context of its own, closed before this returns."""
        start = time.perf_counter()
        network = JobNetwork(Fetcher(policy=job.policy, limits=job.limits, client=self.client), self.log, job.job_id)
        job_page: JobPage | None = None
        try:
            _check_job(job)
            job_page = await self.pages.open(js=isinstance(job.payload.source, TestTemplateSource),
                                             route=network.route)
            job_page.page.on("console", network.on_console)
            self.announce(Started(job_id=job.job_id, renderer_pid=job_page.renderer_pid))
            await self._load(job_page, job, network)
            data, meta, content_type = await self._output(job_page, job)
            await asyncio.to_thread(_write, job.output_path, data)
            fetcher = network.fetcher
            return Rendered(
                job_id=job.job_id, output_path=job.output_path, size_bytes=len(data), content_type=content_type,
                render_ms=_ms(start), blocked=list(fetcher.blocked), fetched=fetcher.fetched, **meta,
            )
        except Exception as exc:
            category, code, message = _classify(exc, job_page)
            return RenderFailed(job_id=job.job_id, category=category, code=code, message=message,
                                render_ms=_ms(start), blocked=list(network.fetcher.blocked))
        finally:
            # The job ends here, before its answer leaves: every later request is refused
            # and counted nowhere, and its context (page, frames, timers, requests) closes.
            network.end()
            if job_page is not None:
                await self.pages.close(job_page)

    async def _output(self, job_page: JobPage, job: RenderJob) -> tuple[bytes, dict[str, int], str]:
        if job.export_type == "pdf":
            data, meta = await render_pdf(job_page, job)
            content_type = "application/pdf"
        else:
            data, meta = await render_image(job_page, job)
            content_type = CONTENT_TYPES[job.payload.image.format]
        if len(data) > job.limits.max_output_bytes:
            raise JobError(
                ErrorCategory.VALIDATION,
                f"output is {len(data)} bytes, more than the limit of {job.limits.max_output_bytes} (MAX_OUTPUT_BYTES)",
                RenderFailure.OUTPUT_LIMIT,
            )
        return data, meta, content_type

    async def _load(self, job_page: JobPage, job: RenderJob, network: JobNetwork) -> None:
        source = job.payload.source
        page = job_page.page
        timeout = float(job.limits.navigation_timeout_ms)
        if isinstance(source, HtmlSource):
            await page.set_content(source.html, wait_until="load", timeout=timeout)
        elif isinstance(source, MenuSource):
            html = render_menu_html(source.menu, source.template)
            await page.set_content(html, wait_until="load", timeout=timeout)
        elif isinstance(source, UrlSource):
            await self._load_url(job_page, source.url, timeout, network)
        elif isinstance(source, TestTemplateSource):
            if source.name == "crash-renderer":
                with contextlib.suppress(PlaywrightError):
                    await page.goto("chrome://crash", timeout=5_000)
                await page.set_content("<p>after crash</p>", timeout=5_000)  # raises: the page crashed
                raise JobError(ErrorCategory.TRANSIENT, "renderer did not crash", RenderFailure.INTERNAL)
            await page.set_content(TEST_TEMPLATES[source.name], wait_until="load", timeout=timeout)
        else:  # pragma: no cover - the union is closed
            raise JobError(ErrorCategory.VALIDATION, "unknown source kind", RenderFailure.INVALID_JOB)

    async def _load_url(self, job_page: JobPage, url: str, timeout: float, network: JobNetwork) -> None:
        fetcher = network.fetcher
        try:
            fetcher.check_url(url, main_document=True)
        except Blocked as exc:
            fetcher.record(url, exc.reason)
            raise JobError(ErrorCategory.PERMANENT, f"URL host not allowed: {exc.reason}",
                           RenderFailure.URL_NOT_ALLOWED) from None
        network.expect_main_navigation = True
        try:
            response = await job_page.page.goto(url, wait_until="load", timeout=timeout)
        except PlaywrightTimeout:
            raise
        except PlaywrightError as exc:
            for item in fetcher.blocked:
                if item.url == url:
                    raise JobError(ErrorCategory.PERMANENT, f"URL not allowed: {item.reason}",
                                   RenderFailure.URL_NOT_ALLOWED) from None
            if job_page.crashed:
                raise
            raise JobError(ErrorCategory.TRANSIENT, f"could not fetch {url}: {first_line(exc)}",
                           RenderFailure.URL_UNREACHABLE) from None
        if self.pages.recheck(job_page):  # the page moved to another renderer process
            self.announce(Started(job_id=network.job_id, renderer_pid=job_page.renderer_pid))
        if response is not None and response.status >= 400:
            category = ErrorCategory.TRANSIENT if response.status >= 500 else ErrorCategory.PERMANENT
            raise JobError(category, f"{url} answered HTTP {response.status}", RenderFailure.URL_HTTP_ERROR)


def _write(path: str, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
