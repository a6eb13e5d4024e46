"""The browser-only baselines, run in spawned processes (one per parallel lane).

* ``bare``: the ceiling. One browser per lane, Playwright's default headless flags,
  JavaScript off, no request routing (Chromium loads the images itself), one warm
  page reused for every document (set_content + pdf). What the machine can do.
* ``bare_context``: the ceiling under the product's isolation contract (a fresh browser
  context per job, DESIGN.md section 4): the ``bare`` loop, but every document gets a
  context and page made for it and closed after. What the machine can do when nothing
  of one job may meet the next.
* ``warm``: the ceiling with the product's network policy: the same loop with the
  child's flags (network lockdown) and every request routed through a Python fetch.
* ``per_job``: the seed's approach. Every document launches a browser, opens a
  page, sets the content, prints the PDF and closes the browser.

Except ``bare``, Chromium runs with lockdown flags (no network of its own), so the
loops route subresources through a minimal Python fetch (urllib) like the child's
fetcher, without the policy checks.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import sys
import time
import urllib.request
from collections.abc import Callable
from enum import StrEnum
from typing import Any


class LaneMode(StrEnum):
    """How a lane renders (the module's docstring): the ceilings, and the seed's approach."""

    BARE = "bare"
    BARE_CONTEXT = "bare_context"
    WARM = "warm"
    PER_JOB = "per_job"
    PER_JOB_CHILD = "per_job_child"

    @property
    def plain(self) -> bool:
        """Playwright's own driver start, not the child's (its NODE_OPTIONS and malloc)."""
        return self in (LaneMode.PER_JOB, LaneMode.BARE, LaneMode.BARE_CONTEXT)

    def launch_args(self) -> list[str]:
        """Playwright's defaults (the bare loops), the seed's flags (per job), or the child's."""
        if self in (LaneMode.BARE, LaneMode.BARE_CONTEXT):
            return []
        return seed_launch_args() if self is LaneMode.PER_JOB else launch_args()


PDF_OPTIONS: dict[str, Any] = {
    "format": "A4",
    "landscape": False,
    "margin": {"top": "10mm", "right": "10mm", "bottom": "10mm", "left": "10mm"},
    "print_background": True,
    "scale": 1.0,
}
CONTEXT_OPTIONS: dict[str, Any] = {
    "java_script_enabled": False,
    "viewport": {"width": 1280, "height": 720},
    "accept_downloads": False,
    "service_workers": "block",
}


def seed_launch_args() -> list[str]:
    """The seed's flags, for the browser-per-job baseline: CHROMIUM_ARGS + the lockdown."""
    from render_child.netpolicy import LOCKDOWN_ARGS
    from shared.messages import CHROMIUM_ARGS

    return [*CHROMIUM_ARGS, *LOCKDOWN_ARGS]


def launch_args() -> list[str]:
    """Exactly the child's flags (render_child.main.browser_args): CHROMIUM_ARGS, the
    child's memory flags and feature switches, and the network lockdown."""
    from render_child.main import browser_args
    from shared.messages import CHROMIUM_ARGS, ChildOptions

    return browser_args(ChildOptions(child_index=0, worker_id="bench", executable_path="",
                                     chromium_args=list(CHROMIUM_ARGS), scratch_dir=""))


def _route(route: Any) -> None:
    url = route.request.url
    if not url.startswith(("http://", "https://")):
        route.fallback()
        return
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the bench's own server
            body = resp.read()
            ctype = resp.headers.get("Content-Type", "application/octet-stream")
        route.fulfill(status=200, headers={"content-type": ctype}, body=body)
    except Exception:
        route.abort("failed")


def lane_main(conn: multiprocessing.connection.Connection, mode: LaneMode, executable: str,
              docs: dict[str, str]) -> None:
    """Spawn target: boot (warm modes), say ready, then run ("run", doc, count) commands."""
    from playwright.sync_api import sync_playwright

    from render_child.main import _start_playwright

    manager = sync_playwright().start() if mode.plain else _start_playwright()
    launch: dict[str, Any] = {"args": mode.launch_args(), "headless": True, "executable_path": executable or None}
    warm = mode in (LaneMode.WARM, LaneMode.BARE)
    browser = page = context = None
    try:
        if mode is LaneMode.BARE_CONTEXT:
            browser = manager.chromium.launch(**launch)
            _context_pdf(browser, docs["small"])()  # warm up
        elif warm:
            browser = manager.chromium.launch(**launch)
            context = browser.new_context(**CONTEXT_OPTIONS)
            if mode is LaneMode.WARM:
                context.route("**/*", _route)
            page = context.new_page()
            page.set_content(docs["small"], wait_until="load")
            page.pdf(**PDF_OPTIONS)  # warm up
        conn.send(("ready", None))
        while (cmd := conn.recv())[0] != "stop":
            _, name, count = cmd
            if page is not None and context is not None:
                one = _warm_pdf(page, context, docs[name])
            elif browser is not None:
                one = _context_pdf(browser, docs[name])
            else:
                one = _per_job_pdf(manager, launch, docs[name])
            durations: list[float] = []
            sizes: list[int] = []
            for _ in range(count):
                t0 = time.perf_counter()
                sizes.append(len(one()))
                durations.append(time.perf_counter() - t0)
            conn.send(("done", {"durations": durations, "end": time.perf_counter(), "sizes": sizes}))
    finally:
        if browser is not None:
            browser.close()
        manager.stop()


def _warm_pdf(page: Any, context: Any, html: str) -> Callable[[], bytes]:
    """One document on the lane's warm page."""
    def one() -> bytes:
        page.set_content(html, wait_until="load")
        data: bytes = page.pdf(**PDF_OPTIONS)
        context.clear_cookies()
        return data
    return one


def _context_pdf(browser: Any, html: str, *, routed: bool = False) -> Callable[[], bytes]:
    """One document in a context and page made for it, closed after; ``routed``: every
    request through the minimal Python fetch (Chromium runs with the lockdown flags)."""
    def one() -> bytes:
        context = browser.new_context(**CONTEXT_OPTIONS)
        if routed:
            context.route("**/*", _route)
        page = context.new_page()
        page.set_content(html, wait_until="load")
        data: bytes = page.pdf(**PDF_OPTIONS)
        context.close()
        return data
    return one


def _per_job_pdf(manager: Any, launch: dict[str, Any], html: str) -> Callable[[], bytes]:
    """One document in a browser launched for it (the seed's approach)."""
    def one() -> bytes:
        browser = manager.chromium.launch(**launch)
        try:
            return _context_pdf(browser, html, routed=True)()
        finally:
            browser.close()
    return one


class Lanes:
    """N lanes (processes), each with its own browser; runs a document N-way parallel."""

    def __init__(self, mode: LaneMode, lanes: int, executable: str, docs: dict[str, str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for _ in range(lanes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=lane_main, args=(child, mode, executable, docs), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for c in self.conns:
            if not c.poll(120):
                raise RuntimeError(f"{mode} lane did not boot in 120 s")
            c.recv()

    def run(self, name: str, jobs: int) -> dict[str, Any]:
        """Split `jobs` documents over the lanes; wall time from start to the last PDF."""
        n = len(self.conns)
        shares = [jobs // n + (1 if i < jobs % n else 0) for i in range(n)]
        start = time.perf_counter()
        for c, share in zip(self.conns, shares, strict=False):
            c.send(("run", name, share))
        durations: list[float] = []
        end = start
        size = 0
        for c in self.conns:
            _, res = c.recv()
            durations += res["durations"]
            end = max(end, res["end"])
            if res["sizes"]:
                size = res["sizes"][0]
        wall = end - start
        return {"jobs": jobs, "wall_s": wall, "per_s": jobs / wall if wall > 0 else 0.0,
                "durations": durations, "pdf_bytes": size}

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(("stop",))
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def browser_loops(mode: LaneMode, lanes: int, executable: str, html: dict[str, str],
                  jobs: dict[str, int], docs: tuple[str, ...] = ()) -> dict[str, Any]:
    """One Lanes run of `mode` over `docs` (default: every document in `jobs`): per document
    jobs, PDFs/s, p50/p95, the load average."""
    from bench.stats import load, pct

    runner = Lanes(mode, lanes, executable, html)
    out: dict[str, Any] = {}
    try:
        for name in docs or tuple(jobs):
            before = load()
            res = runner.run(name, jobs[name])
            d = res.pop("durations")
            res.update(p50_s=pct(d, 50), p95_s=pct(d, 95), per_min=res["per_s"] * 60, load_before=before)
            out[name] = res
            print(f"  {mode} {name}: {res['jobs']} in {res['wall_s']:.1f}s (load {before[0]})",
                  file=sys.stderr, flush=True)
    finally:
        runner.close()
    return out


def best_of(runs: int, mode: LaneMode, lanes: int, executable: str, html: dict[str, str],
            jobs: dict[str, int]) -> dict[str, Any]:
    """Per document, the fastest of `runs` runs (each a fresh set of lanes); every run's PDFs/s kept."""
    best: dict[str, Any] = {}
    for _ in range(runs):
        for name, res in browser_loops(mode, lanes, executable, html, jobs).items():
            seen = best.get(name, {}).get("runs_per_s", [])
            if not best.get(name) or res["per_s"] > best[name]["per_s"]:
                best[name] = res
            best[name]["runs_per_s"] = [*seen, res["per_s"]]
    return best
