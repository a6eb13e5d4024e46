"""The renderer: one warm browser context and page, reused across jobs, reset between them.

Throughput comes from reuse (a warm page renders a small PDF in tens of ms; a new
context and page costs hundreds). Isolation comes from the reset after every job:
the job's document is replaced before its answer (no frame, timer, refresh or request
of it outlives the job; a request that arrives after is refused and counted nowhere);
cookies, HTTP cache, all storage, permissions and emulation are cleared,
and if any step fails the context is thrown away and rebuilt (both in
:mod:`render_child.slots`; printing and capturing are in :mod:`render_child.output`).
The network is never Chromium's own: every request goes through :meth:`Renderer._route`
and the policy.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Request, Route
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from render_child.netpolicy import Blocked, Fetcher, FetchFailed
from render_child.output import CONTENT_TYPES, render_image, render_pdf
from render_child.slots import LogFn, PageSlots, Slot, first_line
from render_child.templates import TEST_TEMPLATES, render_menu_html
from shared.errors import ErrorCategory, JobError
from shared.messages import BlockedRequest, Rendered, RenderFailed, RenderJob
from shared.payload import HtmlSource, MenuSource, TestTemplateSource, UrlSource

_LOCAL_RESOURCE = "Not allowed to load local resource:"


def _classify(exc: BaseException) -> tuple[ErrorCategory, str]:
    if isinstance(exc, JobError):
        return exc.category, exc.message
    if isinstance(exc, PlaywrightTimeout):
        return ErrorCategory.TRANSIENT, f"render timed out: {first_line(exc)}"
    if isinstance(exc, PlaywrightError):
        text = first_line(exc)
        if "crash" in text.lower():
            return ErrorCategory.TRANSIENT, f"renderer crashed: {text}"
        return ErrorCategory.TRANSIENT, f"browser error: {text}"
    return ErrorCategory.TRANSIENT, f"{type(exc).__name__}: {exc}"


class Renderer:
    def __init__(self, browser: Browser, log: LogFn) -> None:
        self.browser = browser
        self.log = log
        self._fetcher: Fetcher | None = None
        self._expect_main_navigation = False
        self.slots = PageSlots(browser, log, route=self._route, on_console=self._on_console)

    # ---- contexts -----------------------------------------------------------

    def warm_up(self) -> None:
        self.slots.get(js=False)

    def close(self) -> None:
        self.slots.close()

    # ---- the network --------------------------------------------------------

    def _on_console(self, message: ConsoleMessage) -> None:
        # Chromium refuses file: (and other local) URLs itself, before routing; record them too
        text = message.text
        if self._fetcher is not None and text.startswith(_LOCAL_RESOURCE):
            url = text[len(_LOCAL_RESOURCE) :].strip()
            scheme = url.split(":", 1)[0].lower()
            self._fetcher.record(url, f"scheme {scheme}: not allowed (refused by Chromium)")

    def _route(self, route: Route, slot: Slot) -> None:
        slot.requested = True
        request = route.request
        url = request.url
        fetcher = self._fetcher
        main_document = False
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("data", "blob", "about"):
            route.fallback()
            return
        if fetcher is None or _from_a_gone_document(request):
            # a request of a finished job's document: refused, and no job's to count
            _safe_abort(route, "blockedbyclient")
            return
        try:
            if request.is_navigation_request() and request.frame.parent_frame is None:
                if not self._expect_main_navigation:
                    # A 204 leaves the page on the job's document; an abort would put it on
                    # Chromium's error page, where the next document.open() kills the browser.
                    fetcher.record(url, "top-level navigation is not allowed")
                    with contextlib.suppress(PlaywrightError):
                        route.fulfill(status=204, body=b"")
                    return
                self._expect_main_navigation = False
                main_document = True
            if scheme not in ("http", "https"):
                raise Blocked(f"scheme {scheme}: not allowed")
            fetcher.check_url(url, main_document=main_document)
            result = fetcher.fetch(
                url, main_document=main_document, method=request.method, headers=request.headers
            )
        except Blocked as exc:
            if fetcher is not None:
                fetcher.record(url, exc.reason)
            _safe_abort(route, "blockedbyclient")
            return
        except FetchFailed as exc:
            if fetcher is not None and main_document:
                fetcher.record(url, f"fetch failed: {exc}")
            _safe_abort(route, "failed")
            return
        except Exception as exc:
            self.log("warning", f"route handler error: {type(exc).__name__}: {exc}", None)
            _safe_abort(route, "failed")
            return
        slot.origins.add(_origin(url))
        slot.origins.add(_origin(result.final_url))
        with contextlib.suppress(PlaywrightError):  # the page may have gone away meanwhile
            route.fulfill(status=result.status, headers=result.headers, body=result.body)

    # ---- jobs ---------------------------------------------------------------

    def render(self, job: RenderJob, *, defer_reset: bool = False) -> Rendered | RenderFailed:
        """Render one job; the slot is reset afterwards, or at :meth:`finish` when
        ``defer_reset`` (the child answers first, then resets before it reads the next job)."""
        self.finish()
        start = time.perf_counter()
        self._fetcher = Fetcher(policy=job.policy, limits=job.limits)
        slot: Slot | None = None
        try:
            source = job.payload.source
            js = isinstance(source, TestTemplateSource)
            if js and not job.allow_test_templates:
                raise JobError(ErrorCategory.VALIDATION, "test templates are not allowed on this worker")
            if job.export_type not in ("pdf", "image"):
                raise JobError(ErrorCategory.VALIDATION, f"unknown export_type {job.export_type!r}")
            slot = self.slots.get(js=js)
            self._load(slot, job)
            if job.export_type == "pdf":
                data, meta = render_pdf(slot, job)
                content_type = "application/pdf"
            else:
                data, meta = render_image(slot, job)
                content_type = CONTENT_TYPES[job.payload.image.format]
            if len(data) > job.limits.max_output_bytes:
                raise JobError(
                    ErrorCategory.VALIDATION,
                    f"output is {len(data)} bytes, more than the limit of "
                    f"{job.limits.max_output_bytes} (MAX_OUTPUT_BYTES)",
                )
            _write(job.output_path, data)
            fetcher = self._fetcher
            return Rendered(
                job_id=job.job_id,
                output_path=job.output_path,
                size_bytes=len(data),
                content_type=content_type,
                render_ms=_ms(start),
                blocked=list(fetcher.blocked),
                fetched=fetcher.fetched,
                **meta,
            )
        except Exception as exc:
            category, message = _classify(exc)
            if slot is not None and slot.crashed and "crash" not in message:
                category, message = ErrorCategory.TRANSIENT, f"renderer crashed: {message}"
            blocked: list[BlockedRequest] = list(self._fetcher.blocked) if self._fetcher else []
            if isinstance(exc, PlaywrightError) and slot is not None:
                # a timed-out or crashed page may still be busy: never reuse it
                self.slots.discard(slot)
            return RenderFailed(
                job_id=job.job_id, category=category, message=message, render_ms=_ms(start), blocked=blocked,
                timed_out=isinstance(exc, PlaywrightTimeout),
            )
        finally:
            # The job ends here, before its answer leaves: from now on every request is
            # refused and counted nowhere, and its document is replaced, so no frame,
            # timer, refresh or pending request of it runs during a later job.
            self._expect_main_navigation = False
            fetcher = self._fetcher
            self._fetcher = None
            if fetcher is not None:
                fetcher.close()
            if slot is not None:
                self.slots.release(slot, defer_reset=defer_reset)

    def finish(self) -> None:
        """Run the reset that :meth:`render` deferred, if any."""
        self.slots.finish()

    def _load(self, slot: Slot, job: RenderJob) -> None:
        source = job.payload.source
        page = slot.page
        timeout = float(job.limits.navigation_timeout_ms)
        if isinstance(source, HtmlSource):
            page.set_content(source.html, wait_until="load", timeout=timeout)
        elif isinstance(source, MenuSource):
            html = render_menu_html(source.menu, source.template)
            page.set_content(html, wait_until="load", timeout=timeout)
        elif isinstance(source, UrlSource):
            assert self._fetcher is not None
            try:
                self._fetcher.check_url(source.url, main_document=True)
            except Blocked as exc:
                self._fetcher.record(source.url, exc.reason)
                raise JobError(ErrorCategory.PERMANENT, f"URL host not allowed: {exc.reason}") from None
            self._expect_main_navigation = True
            try:
                response = page.goto(source.url, wait_until="load", timeout=timeout)
            except PlaywrightError as exc:
                for item in self._fetcher.blocked:
                    if item.url == source.url:
                        raise JobError(ErrorCategory.PERMANENT, f"URL not allowed: {item.reason}") from None
                if "ERR_FAILED" in str(exc):
                    raise JobError(
                        ErrorCategory.TRANSIENT, f"could not fetch {source.url}: {first_line(exc)}") from None
                raise
            if response is not None and response.status >= 400:
                category: ErrorCategory = ErrorCategory.TRANSIENT if response.status >= 500 else ErrorCategory.PERMANENT
                raise JobError(category, f"{source.url} answered HTTP {response.status}")
        elif isinstance(source, TestTemplateSource):
            if source.name == "crash-renderer":
                with contextlib.suppress(PlaywrightError):
                    page.goto("chrome://crash", timeout=5_000)
                page.set_content("<p>after crash</p>", timeout=5_000)  # raises: the page crashed
                raise JobError(ErrorCategory.TRANSIENT, "renderer did not crash")
            page.set_content(TEST_TEMPLATES[source.name], wait_until="load", timeout=timeout)
        else:  # pragma: no cover - the union is closed
            raise JobError("validation", "unknown source kind")


def _from_a_gone_document(request: Request) -> bool:
    """A request whose frame is already detached: a subframe of a document that was replaced."""
    try:
        return request.frame.is_detached()
    except PlaywrightError:  # no frame at all (a worker): nothing of a live document
        return True


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return f"{scheme.lower()}://{host.lower()}"


def _safe_abort(route: Route, code: str) -> None:
    with contextlib.suppress(PlaywrightError):
        route.abort(code)


def _write(path: str, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
