"""The slot reset clears what a job could have written, and a document without script
and without a request writes nothing (so its reset may skip cookies, cache and permissions)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Route
from render_helpers import CHROMIUM, requires_chromium

from render_child.main import _start_playwright, browser_args
from render_child.slots import PageSlots, Slot
from shared.messages import CHROMIUM_ARGS, ChildOptions

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

# Every way a page could leave a cookie or storage behind without a request: all of it
# needs script (off in the slot) or a response (there is none).
NO_REQUEST_DOCUMENT = """<!doctype html><title>state</title>
<meta http-equiv="set-cookie" content="meta=1; path=/">
<script>document.cookie = "script=1"; localStorage.setItem("k", "v"); sessionStorage.setItem("k", "v");
indexedDB.open("db"); caches.open("c");</script>
<noscript><p>no script</p></noscript><p>hello</p>"""


@pytest.fixture(scope="module")
def slots() -> Iterator[PageSlots]:
    options = ChildOptions(child_index=0, worker_id="test", executable_path=CHROMIUM,
                           chromium_args=list(CHROMIUM_ARGS), scratch_dir="")
    manager = _start_playwright()
    launch: dict[str, Any] = {"args": browser_args(options), "headless": True, "chromium_sandbox": False}
    if os.path.exists(CHROMIUM):
        launch["executable_path"] = CHROMIUM
    browser = manager.chromium.launch(**launch)
    logs: list[str] = []

    def route(route: Route, _slot: Slot) -> None:
        route.abort("blockedbyclient")

    slots = PageSlots(browser, lambda level, message, _job: logs.append(f"{level}: {message}"),
                      route=route, on_console=lambda _message: None)
    try:
        yield slots
        assert logs == []  # no reset failed (a failure would rebuild the context)
    finally:
        slots.close()
        browser.close()
        manager.stop()


def test_reset_clears_the_context_cookie_jar(slots: PageSlots) -> None:
    slot = slots.get(js=False)
    slot.context.add_cookies([
        {"name": "sid", "value": "secret", "url": "https://example.com/"},
        {"name": "other", "value": "secret", "url": "http://other.example/"},
    ])
    assert len(slot.context.cookies()) == 2
    slot.requested = True  # as after a job that made a request
    slots.reset(slot)
    assert slots.get(js=False) is slot  # reset in place, not rebuilt
    assert slot.context.cookies() == []


def test_reset_after_a_navigation_clears_cookies(slots: PageSlots) -> None:
    slot = slots.get(js=False)
    slot.context.add_cookies([{"name": "sid", "value": "secret", "url": "https://example.com/"}])
    slot.page.goto("data:text/html,<p>navigated</p>")  # not routed, not a network request
    slots.release(slot, defer_reset=False)  # as at the end of a job
    assert slot.page.url == "about:blank"
    assert slot.context.cookies() == []


def test_document_without_script_or_request_writes_nothing(slots: PageSlots) -> None:
    slot = slots.get(js=False)
    slots.reset(slot)
    slot.page.set_content(NO_REQUEST_DOCUMENT, wait_until="load")
    slot.page.pdf()
    assert not slot.requested
    assert slot.context.storage_state() == {"cookies": [], "origins": []}
    cookies = slot.cdp.send("Network.getAllCookies")["cookies"]  # every context's jar, as Chromium sees it
    assert [c for c in cookies if c["name"] in ("meta", "script")] == []
    slots.reset(slot)
    assert slots.get(js=False) is slot


@pytest.mark.parametrize(
    "html",
    [
        '<img src="http://evil.example/routed.png">',  # routed (and aborted)
        '<link rel="prefetch" href="http://evil.example/prefetch">',  # not routable; the lockdown fails it
    ],
)
def test_any_request_marks_the_slot_for_the_full_reset(slots: PageSlots, html: str) -> None:
    slot = slots.get(js=False)
    slots.reset(slot)
    assert not slot.requested
    with slot.page.expect_request(lambda request: "evil.example" in request.url, timeout=10_000):
        slot.page.set_content(html, wait_until="load")
    assert slot.requested
    slots.reset(slot)
    assert not slot.requested
