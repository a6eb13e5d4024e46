"""The renderer's page slots: warm browser contexts, each with one page, and the reset
that makes a slot's page as if new between jobs.

A slot is reused across jobs (a warm page renders a small PDF in tens of ms; a new
context and page costs hundreds). After every job it is reset: before the job's answer
its document is replaced by a new about:blank one (nothing of a finished job runs
later); then cookies, HTTP cache, all storage, permissions and emulation are cleared,
and if any step fails the context is thrown away; the next job then gets a new one.

Each step of the reset is a round trip through the Playwright driver (~1-2 ms of three
processes' CPU), so the reset clears only what the job could have touched: cookies and
the HTTP cache after a request (the page asked the network for anything, routed or
not) or where JavaScript ran; storage only for the origins the job fetched from;
permissions only where JavaScript ran (nothing of ours grants any, and without script
nothing can ask). A document without script and without a single request has no way
to write a cookie, storage or the cache (tests/integration/test_render_reset.py), so
its reset is no round trip at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from playwright.sync_api import Browser, BrowserContext, CDPSession, ConsoleMessage, Page, Request, Route

DEFAULT_VIEWPORT = {"width": 1280, "height": 720}
LogFn = Callable[[str, str, str | None], None]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


@dataclass
class Slot:
    """A context with one warm page; ``js`` contexts exist only for test templates."""

    context: BrowserContext
    page: Page
    cdp: CDPSession
    js: bool
    crashed: bool = False
    origins: set[str] = field(default_factory=set)
    # the page made a request since the last reset (routed, or one Playwright cannot
    # route such as <link rel=prefetch>, which the lockdown fails)
    requested: bool = False


class PageSlots:
    """The two slots a renderer keeps (without JavaScript, and with it for test
    templates), built on demand, reset after each job, rebuilt when they break."""

    def __init__(
        self,
        browser: Browser,
        log: LogFn,
        route: Callable[[Route, Slot], None],
        on_console: Callable[[ConsoleMessage], None],
    ) -> None:
        self.browser = browser
        self.log = log
        self._route = route
        self._on_console = on_console
        self._slot: Slot | None = None
        self._js_slot: Slot | None = None
        self._pending_reset: Slot | None = None

    def _new(self, js: bool) -> Slot:
        context = self.browser.new_context(
            java_script_enabled=js,
            viewport=DEFAULT_VIEWPORT,  # type: ignore[arg-type]
            accept_downloads=False,
            service_workers="block",
            bypass_csp=False,
        )
        context.set_default_timeout(30_000)
        page = context.new_page()
        slot = Slot(context=context, page=page, cdp=context.new_cdp_session(page), js=js)

        def on_crash(_page: Page) -> None:
            slot.crashed = True

        def on_request(_request: Request) -> None:
            slot.requested = True

        page.on("crash", on_crash)
        page.on("request", on_request)
        page.on("console", self._on_console)
        context.route("**/*", lambda route: self._route(route, slot))
        return slot

    def get(self, js: bool) -> Slot:
        slot = self._js_slot if js else self._slot
        if slot is None or slot.crashed or slot.page.is_closed():
            if slot is not None:
                self.discard(slot)
            slot = self._new(js)
            if js:
                self._js_slot = slot
            else:
                self._slot = slot
        return slot

    def discard(self, slot: Slot) -> None:
        if slot is self._slot:
            self._slot = None
        if slot is self._js_slot:
            self._js_slot = None
        try:
            slot.context.close()
        except Exception as exc:
            self.log("warning", f"closing a browser context failed: {first_line(exc)}", None)

    def close(self) -> None:
        for slot in (self._slot, self._js_slot):
            if slot is not None:
                self.discard(slot)

    def release(self, slot: Slot, *, defer_reset: bool) -> None:
        """A job is done with ``slot``: its document goes now (before the job's answer);
        the rest of the reset runs now too, or at :meth:`finish` when ``defer_reset``."""
        if slot is self._slot or slot is self._js_slot:
            if not self.end_document(slot):
                return
            if defer_reset:
                self._pending_reset = slot
            else:
                self.reset(slot)

    def end_document(self, slot: Slot) -> bool:
        """Replace the job's document with a new about:blank one: its frames, timers,
        refreshes and requests end with it (a set_content of the next job would replace it
        only when that job starts, and between jobs nobody handles its requests, so they
        would reach the next job's network policy). On failure the context goes instead."""
        try:
            if slot.crashed or slot.page.is_closed():
                raise RuntimeError("page crashed or closed")
            if slot.page.url != "about:blank":
                slot.requested = True  # it navigated (a data: URL is not routed): the full reset
                # Leave the job's origin (a url source) or Chromium's error page: a new
                # document (and renderer process, ~90 ms of CPU). Never set_content on an
                # error page: document.open() in chrome-error://chromewebdata/ kills the
                # whole browser (SIGTRAP, a CHECK in the browser process).
                slot.page.goto("about:blank", wait_until="commit", timeout=5_000)
            else:
                # A set_content document (~10 ms of CPU instead of ~90 for a navigation):
                # stopLoading cancels its loads and its meta refresh (document.open() alone
                # leaves the refresh armed), then document.open() removes its subframes.
                slot.cdp.send("Page.stopLoading")
                slot.page.set_content("", timeout=5_000)
            return True
        except Exception as exc:
            self.log("warning", f"ending a document failed, closing its context: {first_line(exc)}", None)
            self.discard(slot)
            return False

    def finish(self) -> None:
        """Run the reset that :meth:`release` deferred, if any."""
        slot, self._pending_reset = self._pending_reset, None
        if slot is not None and (slot is self._slot or slot is self._js_slot):
            self.reset(slot)

    def reset(self, slot: Slot) -> None:
        """Make the slot's page as if new; on any failure, throw the context away."""
        try:
            if slot.crashed or slot.page.is_closed():
                raise RuntimeError("page crashed or closed")
            cdp = slot.cdp
            # without script and without a request, a document cannot write a cookie or
            # fill the cache (a navigation is a request; test_render_reset.py); the
            # document itself is already gone (end_document)
            touched = slot.js or slot.requested
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
            if touched:
                # the whole cookie jar of this context (what context.clear_cookies() does too)
                cdp.send("Network.clearBrowserCookies")
                cdp.send("Network.clearBrowserCache")
            if slot.js:
                slot.context.clear_permissions()
            for origin in sorted(slot.origins - {"emulation"}):
                cdp.send("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})
            slot.origins.clear()
            slot.requested = False
        except Exception as exc:
            self.log("warning", f"context reset failed, rebuilding it: {first_line(exc)}", None)
            self.discard(slot)
