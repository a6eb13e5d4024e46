"""The renderer: one warm browser context and page, reused across jobs, reset between them.

Throughput comes from reuse (a warm page renders a small PDF in tens of ms; a new
context and page costs hundreds). Isolation comes from the reset after every job:
about:blank, cookies, HTTP cache, all storage, permissions and emulation are cleared,
and if any step fails the context is thrown away and rebuilt. The network is never
Chromium's own: every request goes through :meth:`Renderer._route` and the policy.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, CDPSession, ConsoleMessage, Page, Route
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from render_child.netpolicy import Blocked, Fetcher, FetchFailed
from render_child.templates import TEST_TEMPLATES, render_menu_html
from shared.errors import ErrorCategory, JobError
from shared.messages import BlockedRequest, Rendered, RenderFailed, RenderJob
from shared.payload import HtmlSource, MenuSource, TestTemplateSource, UrlSource

DEFAULT_VIEWPORT = {"width": 1280, "height": 720}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_PAGES_COUNT = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)|/Count\s+(\d+)[^>]*?/Type\s*/Pages\b")

_LOCAL_RESOURCE = "Not allowed to load local resource:"
LogFn = Callable[[str, str, str | None], None]


def count_pdf_pages(data: bytes) -> int:
    """Pages of a PDF written by Chromium (Skia writes plain, uncompressed page objects)."""
    pages = len(_PAGE_OBJECT.findall(data))
    if pages:
        return pages
    counts = [int(a or b) for a, b in _PAGES_COUNT.findall(data)]
    return max(counts, default=0)


def _classify(exc: BaseException) -> tuple[ErrorCategory, str]:
    if isinstance(exc, JobError):
        return exc.category, exc.message
    if isinstance(exc, PlaywrightTimeout):
        return ErrorCategory.TRANSIENT, f"render timed out: {_first_line(exc)}"
    if isinstance(exc, PlaywrightError):
        text = _first_line(exc)
        if "crash" in text.lower():
            return ErrorCategory.TRANSIENT, f"renderer crashed: {text}"
        return ErrorCategory.TRANSIENT, f"browser error: {text}"
    return ErrorCategory.TRANSIENT, f"{type(exc).__name__}: {exc}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


@dataclass
class _Slot:
    """A context with one warm page; ``js`` contexts exist only for test templates."""

    context: BrowserContext
    page: Page
    cdp: CDPSession
    js: bool
    crashed: bool = False
    origins: set[str] = field(default_factory=set)


class Renderer:
    def __init__(self, browser: Browser, log: LogFn) -> None:
        self.browser = browser
        self.log = log
        self._fetcher: Fetcher | None = None
        self._expect_main_navigation = False
        self._slot: _Slot | None = None
        self._js_slot: _Slot | None = None
        self._pending_reset: _Slot | None = None
        self.last_reset_ms = 0.0
        self.resets = 0
        self.rebuilds = 0

    # ---- contexts -----------------------------------------------------------

    def _new_slot(self, js: bool) -> _Slot:
        context = self.browser.new_context(
            java_script_enabled=js,
            viewport=DEFAULT_VIEWPORT,  # type: ignore[arg-type]
            accept_downloads=False,
            service_workers="block",
            bypass_csp=False,
        )
        context.set_default_timeout(30_000)
        page = context.new_page()
        slot = _Slot(context=context, page=page, cdp=context.new_cdp_session(page), js=js)

        def on_crash(_page: Page) -> None:
            slot.crashed = True

        page.on("crash", on_crash)
        page.on("console", self._on_console)
        context.route("**/*", lambda route: self._route(route, slot))
        return slot

    def _get_slot(self, js: bool) -> _Slot:
        slot = self._js_slot if js else self._slot
        if slot is None or slot.crashed or slot.page.is_closed():
            if slot is not None:
                self._discard(slot)
                self.rebuilds += 1
            slot = self._new_slot(js)
            if js:
                self._js_slot = slot
            else:
                self._slot = slot
        return slot

    def _discard(self, slot: _Slot) -> None:
        if slot is self._slot:
            self._slot = None
        if slot is self._js_slot:
            self._js_slot = None
        try:
            slot.context.close()
        except Exception as exc:
            self.log("warning", f"closing a browser context failed: {_first_line(exc)}", None)

    def warm_up(self) -> None:
        self._get_slot(js=False)

    def close(self) -> None:
        for slot in (self._slot, self._js_slot):
            if slot is not None:
                self._discard(slot)

    # ---- the network --------------------------------------------------------

    def _on_console(self, message: ConsoleMessage) -> None:
        # Chromium refuses file: (and other local) URLs itself, before routing; record them too
        text = message.text
        if self._fetcher is not None and text.startswith(_LOCAL_RESOURCE):
            url = text[len(_LOCAL_RESOURCE) :].strip()
            scheme = url.split(":", 1)[0].lower()
            self._fetcher.record(url, f"scheme {scheme}: not allowed (refused by Chromium)")

    def _route(self, route: Route, slot: _Slot) -> None:
        request = route.request
        url = request.url
        fetcher = self._fetcher
        main_document = False
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("data", "blob", "about"):
            route.fallback()
            return
        try:
            if fetcher is None:
                raise Blocked("no job is running")
            if request.is_navigation_request() and request.frame.parent_frame is None:
                if not self._expect_main_navigation:
                    raise Blocked("top-level navigation is not allowed")
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
        slot: _Slot | None = None
        try:
            source = job.payload.source
            js = isinstance(source, TestTemplateSource)
            if js and not job.allow_test_templates:
                raise JobError(ErrorCategory.VALIDATION, "test templates are not allowed on this worker")
            if job.export_type not in ("pdf", "image"):
                raise JobError(ErrorCategory.VALIDATION, f"unknown export_type {job.export_type!r}")
            slot = self._get_slot(js=js)
            self._load(slot, job)
            if job.export_type == "pdf":
                data, meta = self._pdf(slot, job)
                content_type = "application/pdf"
            else:
                data, meta = self._image(slot, job)
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
                self._discard(slot)
                self.rebuilds += 1
            return RenderFailed(
                job_id=job.job_id, category=category, message=message, render_ms=_ms(start), blocked=blocked,
                timed_out=isinstance(exc, PlaywrightTimeout),
            )
        finally:
            self._expect_main_navigation = False
            fetcher = self._fetcher
            self._fetcher = None
            if fetcher is not None:
                fetcher.close()
            if slot is not None and (slot is self._slot or slot is self._js_slot):
                if defer_reset:
                    self._pending_reset = slot
                else:
                    self.reset(slot)

    def finish(self) -> None:
        """Run the reset that :meth:`render` deferred, if any."""
        slot, self._pending_reset = self._pending_reset, None
        if slot is not None and (slot is self._slot or slot is self._js_slot):
            self.reset(slot)

    def _load(self, slot: _Slot, job: RenderJob) -> None:
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
                        ErrorCategory.TRANSIENT, f"could not fetch {source.url}: {_first_line(exc)}") from None
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

    def _pdf(self, slot: _Slot, job: RenderJob) -> tuple[bytes, dict[str, Any]]:
        opts = job.payload.pdf
        m = opts.margins
        data = slot.page.pdf(
            format=opts.page_size,
            landscape=opts.landscape,
            margin={"top": m.top, "right": m.right, "bottom": m.bottom, "left": m.left},
            print_background=opts.print_background,
            scale=opts.scale,
        )
        pages = count_pdf_pages(data)
        if pages > job.limits.max_pages:
            limit = job.limits.max_pages
            raise JobError(
                ErrorCategory.VALIDATION,
                f"PDF has {pages} pages, more than the limit of {limit} (MAX_PAGES)"
            )
        return data, {"pages": pages}

    def _image(self, slot: _Slot, job: RenderJob) -> tuple[bytes, dict[str, Any]]:
        opts = job.payload.image
        width = opts.width
        view_height = opts.height or 800
        dsf = opts.device_scale_factor
        cdp = slot.cdp
        cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": view_height, "deviceScaleFactor": dsf, "mobile": False},
        )
        slot.origins.add("emulation")  # marks the slot for an emulation reset
        if opts.full_page:
            metrics = cdp.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            height = max(1, int(size["height"] + 0.999))
        else:
            height = view_height
        pixels = width * height * dsf * dsf
        if pixels > job.limits.max_image_pixels:
            raise JobError(
                ErrorCategory.VALIDATION,
                f"image would be {int(pixels)} pixels ({width}x{height} at scale {dsf}), more than the limit "
                f"of {job.limits.max_image_pixels} (MAX_IMAGE_PIXELS)",
            )
        params: dict[str, Any] = {
            "format": opts.format,
            "captureBeyondViewport": opts.full_page,
            "fromSurface": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        }
        if opts.format != "png":
            params["quality"] = opts.quality if opts.quality is not None else 85
        result = cdp.send("Page.captureScreenshot", params)
        data = base64.b64decode(result["data"])
        return data, {"width": round(width * dsf), "height": round(height * dsf)}

    # ---- isolation ----------------------------------------------------------

    def reset(self, slot: _Slot) -> None:
        """Make the slot's page as if new; on any failure, throw the context away."""
        start = time.perf_counter()
        try:
            if slot.crashed or slot.page.is_closed():
                raise RuntimeError("page crashed or closed")
            page = slot.page
            cdp = slot.cdp
            if page.url != "about:blank":
                # leave the job's origin (a url source); set_content pages stay on about:blank
                # and the next set_content replaces their whole document (~25 ms saved)
                page.goto("about:blank", timeout=5_000)
            if "emulation" in slot.origins:
                cdp.send(
                    "Emulation.setDeviceMetricsOverride",
                    {
                        "width": DEFAULT_VIEWPORT["width"],
                        "height": DEFAULT_VIEWPORT["height"],
                        "deviceScaleFactor": 1,
                        "mobile": False,
                    },
                )
            slot.context.clear_cookies()
            slot.context.clear_permissions()
            cdp.send("Network.clearBrowserCache")
            cdp.send("Network.clearBrowserCookies")
            for origin in sorted(slot.origins - {"emulation"}):
                cdp.send("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})
            slot.origins.clear()
            self.resets += 1
        except Exception as exc:
            self.log("warning", f"context reset failed, rebuilding it: {_first_line(exc)}", None)
            self._discard(slot)
            self.rebuilds += 1
        self.last_reset_ms = _ms(start)


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
