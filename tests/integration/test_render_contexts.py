"""The child's job pages, in process, two at once on one browser: cookies, localStorage,
sessionStorage and permissions one job's page sets are not there for the other's.

Documents run no script in production (JavaScript is off but for the built-in test
pages), so here the test itself writes through Playwright into job A's page, on the
same origin job B's page has open at the same moment, and reads from both.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from playwright.async_api import async_playwright
from render_helpers import CHROMIUM, LocalServer, requires_chromium

from render_child.main import browser_args
from render_child.netpolicy import Fetcher, pinned_client
from render_child.network import JobNetwork
from render_child.page import JobPage, Pages
from render_child.procs import browser_pid
from shared.messages import CHROMIUM_ARGS, ChildOptions, NetworkPolicy, RenderLimits

pytestmark = [pytest.mark.timeout(180), pytest.mark.chromium, requires_chromium]

READ = """async () => ({
    cookie: document.cookie,
    local: localStorage.getItem("who"),
    session: sessionStorage.getItem("who"),
    geolocation: (await navigator.permissions.query({name: "geolocation"})).state,
})"""
WRITE = """() => {
    document.cookie = "who=a; max-age=3600";
    localStorage.setItem("who", "a");
    sessionStorage.setItem("who", "a");
}"""


async def _open(pages: Pages, server: LocalServer, client: httpx.AsyncClient) -> JobPage:
    policy = NetworkPolicy(allowed_hosts=[server.netloc], allowed_url_hosts=[server.netloc],
                           trusted_private_hosts=[server.netloc])
    network = JobNetwork(Fetcher(policy=policy, limits=RenderLimits(), client=client), pages.log, "job")
    job_page = await pages.open(js=True, route=network.route)
    network.expect_main_navigation = True
    await job_page.page.goto(server.url("/page"), wait_until="load")
    return job_page


async def _check(server: LocalServer) -> None:
    options = ChildOptions(child_index=0, worker_id="t", executable_path=CHROMIUM,
                           chromium_args=list(CHROMIUM_ARGS), scratch_dir="/tmp")
    logs: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM or None, args=browser_args(options))
        client = pinned_client()
        pages = Pages(browser, browser_pid(os.getpid()), lambda level, message, _job: logs.append(message))
        a = await _open(pages, server, client)
        b = await _open(pages, server, client)  # both open now, on the same origin
        await a.page.evaluate(WRITE)
        await a.context.grant_permissions(["geolocation"], origin=server.url("").rstrip("/"))
        seen_a, seen_b = await asyncio.gather(a.page.evaluate(READ), b.page.evaluate(READ))
        assert seen_a == {"cookie": "who=a", "local": "a", "session": "a", "geolocation": "granted"}
        assert seen_b == {"cookie": "", "local": None, "session": None, "geolocation": "prompt"}
        assert a.renderer_pid and b.renderer_pid and a.renderer_pid != b.renderer_pid
        await pages.close(a)
        await pages.close(b)
        await client.aclose()
        await browser.close()
    assert logs == []


def test_cookies_storage_and_permissions_stay_in_their_job() -> None:
    server = LocalServer(routes={"/page": lambda: (200, {"Content-Type": "text/html"}, b"<p>page</p>")})
    try:
        asyncio.run(_check(server))
    finally:
        server.close()
