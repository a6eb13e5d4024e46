"""Hostile corpus: the subresource-vector document that crashed Chromium, intermittently.

hostile/crash_subresources.html combines iframes with srcdoc, object/embed, SVG, meta
refresh, CSS @import, fonts and srcset. The cause (Chromium's log with
--enable-logging=stderr --v=1, the browser's exit status, a Playwright run step by
step): its top-level meta refresh fires after the job; the route handler refused it
with an abort, which puts the main frame on Chromium's error page
(chrome-error://chromewebdata/); the next job's set_content then runs document.open()
in that error page, and the browser process dies of SIGTRAP (a CHECK). The victim was
whichever job came next ("Target page, context or browser has been closed", then
"render child died"). Now a refused top-level navigation is answered 204 (the page stays
on its document), and the job's document is ended before its answer, never by a
document.open() on an error page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from render_helpers import LocalServer, make_job, requires_chromium, running_child

from shared.messages import NetworkPolicy, Rendered, RenderLimits

pytestmark = [pytest.mark.timeout(240), pytest.mark.chromium, requires_chromium]

CRASH_HTML = Path(__file__).parent / "hostile" / "crash_subresources.html"
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a0c9b1a60000000049454e44ae426082"
)
ROUNDS = 3


def test_the_crashing_document_fails_no_other_job_and_keeps_the_browser() -> None:
    host = LocalServer(
        routes={
            "/a.png": lambda: (200, {"Content-Type": "image/png"}, PNG_1PX),
            "/s.css": lambda: (200, {"Content-Type": "text/css"}, b"@import url(/s.css); p { color: #333 }"),
            "/font.woff2": lambda: (200, {"Content-Type": "font/woff2"}, b"wOF2 not really a font"),
            "/page.html": lambda: (200, {"Content-Type": "text/html"}, b"<p>embedded</p><img src=/a.png>"),
        }
    )
    victim = LocalServer()  # loopback, not trusted: refused
    try:
        html = CRASH_HTML.read_text(encoding="utf-8").replace("{HOST}", f"http://{host.netloc}")
        html = html.replace("{VICTIM}", f"http://{victim.netloc}")
        assert 6_000 < len(html.encode()) < 8_000
        policy = NetworkPolicy(allowed_hosts=["127.0.0.1"], trusted_private_hosts=[host.netloc])
        limits = RenderLimits(navigation_timeout_ms=20_000)
        with running_child() as child:
            pid = child.pid
            for _ in range(ROUNDS):
                a = child.render(make_job(html, child.scratch, policy=policy, limits=limits), timeout=90)
                assert isinstance(a, Rendered), a
                blocked = {item.url: item.reason for item in a.blocked}
                top = blocked.get(f"http://{victim.netloc}/top-refresh")
                assert top in (None, "top-level navigation is not allowed")
                # Its refreshes are due 1 s after its load: the document is gone, nothing of it runs.
                end = len(host.hits)
                assert host.wait_for_hit(lambda hit: True, after=end, timeout=2) is None
                b = child.render(make_job("<p>plain</p>", child.scratch, policy=policy, limits=limits), timeout=90)
                assert isinstance(b, Rendered), b  # before: Chromium died under this job
                assert b.blocked == [] and b.fetched == 0
                assert child.process.is_alive() and child.pid == pid
        assert victim.hits == []
    finally:
        host.close()
        victim.close()
