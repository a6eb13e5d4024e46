"""Several jobs at once in one child, each in its own browser context: nothing of one is
seen by another, and every request is counted to the job whose page made it.

Every test makes its jobs overlap for real: a resource each job's page needs is held
by the server until all of them have asked for it (a barrier), so the jobs' pages
are open at the same moment; none of them could finish alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from PIL import Image
from render_helpers import LocalServer, make_job, requires_chromium, running_child

from shared.messages import NetworkPolicy, Rendered, RenderFailed, RenderJob, RenderLimits
from shared.payload import ImageOptions, UrlSource
from shared.vocabulary import RenderFailure

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a0c9b1a60000000049454e44ae426082"
)
LIMITS = RenderLimits(navigation_timeout_ms=60_000)
Route = Callable[[], tuple[int, dict[str, str], bytes]]


def _png() -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "image/png"}, PNG_1PX


def _held(barrier: threading.Barrier) -> Route:
    """An image answered only once every job has asked for its own copy."""

    def answer() -> tuple[int, dict[str, str], bytes]:
        barrier.wait()
        return _png()

    return answer


def _policy(server: LocalServer) -> NetworkPolicy:
    return NetworkPolicy(allowed_hosts=[server.netloc], allowed_url_hosts=[server.netloc],
                         trusted_private_hosts=[server.netloc])


def test_each_request_is_counted_to_the_job_whose_page_made_it() -> None:
    barrier = threading.Barrier(3, timeout=90)
    routes: dict[str, Route] = {f"/held-{name}.png": _held(barrier) for name in "abc"}
    server = LocalServer(routes={**routes, **{f"/{name}-{i}.png": _png for name in "abc" for i in range(4)}})
    victim = LocalServer()  # loopback, not trusted: refused, and recorded as blocked
    try:
        images = {"a": 3, "b": 1, "c": 2}
        blocked = {"a": [], "b": ["/b-refused-1", "/b-refused-2"], "c": ["/c-refused"]}
        jobs: dict[str, RenderJob] = {}
        with running_child(slots=3) as child:
            for name in "abc":
                html = f'<img src="{server.url(f"/held-{name}.png")}">'
                html += "".join(f'<img src="{server.url(f"/{name}-{i}.png")}">' for i in range(images[name]))
                html += "".join(f'<img src="{victim.url(path)}">' for path in blocked[name])
                jobs[name] = make_job(html, child.scratch, policy=_policy(server), limits=LIMITS)
            answers = child.render_all(list(jobs.values()), timeout=120)
            assert {s.job_id for s in child.started} == {job.job_id for job in jobs.values()}
            assert all(s.renderer_pid > 0 for s in child.started), child.started
            assert len({s.renderer_pid for s in child.started}) == 3  # a renderer process each
        for name, job in jobs.items():
            answer = answers[job.job_id]
            assert isinstance(answer, Rendered), answer
            assert answer.fetched == images[name] + 1  # its own images and its held one, nobody else's
            assert sorted(item.url for item in answer.blocked) == sorted(victim.url(p) for p in blocked[name])
        assert victim.hits == []
    finally:
        server.close()
        victim.close()


def test_concurrent_jobs_share_no_http_cache() -> None:
    barrier = threading.Barrier(2, timeout=90)
    cached = {"Content-Type": "image/png", "Cache-Control": "public, max-age=3600"}
    server = LocalServer(routes={
        "/held-a.png": _held(barrier), "/held-b.png": _held(barrier),
        "/shared.png": lambda: (200, cached, PNG_1PX),
    })
    try:
        with running_child(slots=2) as child:
            jobs = [make_job(f'<img src="{server.url(f"/held-{n}.png")}"><img src="{server.url("/shared.png")}">',
                             child.scratch, policy=_policy(server), limits=LIMITS) for n in "ab"]
            answers = child.render_all(jobs, timeout=120)
            assert all(isinstance(a, Rendered) for a in answers.values()), answers
            later = child.render(make_job(f'<img src="{server.url("/shared.png")}">', child.scratch,
                                          policy=_policy(server), limits=LIMITS), timeout=60)
            assert isinstance(later, Rendered), later
        assert [hit.path for hit in server.hits].count("/shared.png") == 3  # fetched by each job itself
    finally:
        server.close()


def _red_pixels(answer: Rendered) -> int:
    with Image.open(answer.output_path) as img:
        rgb = img.convert("RGB")
        return sum(1 for r, g, b in rgb.get_flattened_data() if r > 200 and g < 60 and b < 60)


def test_a_page_one_job_visited_is_not_visited_for_another() -> None:
    """:visited would colour a link red. Job A's page frames page Y and links to it; job
    B's page, on the same site and open at the same time, links to Y too.

    A job's context records no :visited history at all: even A's own link stays blue
    (measured with Chromium 156),
    so none can cross to B. Should a Chromium start recording it, A's check fails
    first, and B's then says whether it stays in A's context."""
    barrier = threading.Barrier(2, timeout=90)
    css = "<style>a { color: rgb(0,0,255); font-size: 80px } a:visited { color: rgb(255,0,0) }</style>"
    server = LocalServer()
    page_y = server.url("/page-y")
    server.routes.update({
        # B's page waits for its held image until A's frame has loaded Y
        "/page-y": lambda: (barrier.wait(), (200, {"Content-Type": "text/html"}, b"<p>y</p>"))[1],
        "/held-b.png": lambda: (barrier.wait(), _png())[1],
        "/page-a": lambda: (200, {"Content-Type": "text/html"},
                            f'{css}<a href="{page_y}">YY</a><iframe src="{page_y}"></iframe>'.encode()),
        "/page-b": lambda: (200, {"Content-Type": "text/html"},
                            f'{css}<a href="{page_y}">YY</a><img src="{server.url("/held-b.png")}">'.encode()),
    })
    try:
        with running_child(slots=2) as child:
            a, b = (make_job(UrlSource(url=server.url(f"/page-{n}")), child.scratch, policy=_policy(server),
                             limits=LIMITS, export_type="image",
                             image=ImageOptions(format="png", width=400, height=120)) for n in "ab")
            answers = child.render_all([a, b], timeout=120)
            answer_a, answer_b = answers[a.job_id], answers[b.job_id]
            assert isinstance(answer_a, Rendered) and isinstance(answer_b, Rendered), answers
            # red text of 80 px is thousands of pixels; the 1x1 image is one
            assert _red_pixels(answer_a) < 50  # nothing recorded, even in A's own context
            assert _red_pixels(answer_b) < 50  # and nothing in B's
    finally:
        server.close()


def test_a_download_in_one_job_touches_no_other() -> None:
    barrier = threading.Barrier(2, timeout=90)
    server = LocalServer(routes={
        "/held-b.png": _held(barrier),
        "/file.bin": lambda: (200, {"Content-Type": "application/octet-stream",
                                    "Content-Disposition": 'attachment; filename="x.bin"'}, b"x" * 4096),
    })
    # A's page is a download: held until B is running, so both are open at once.
    server.routes["/download"] = lambda: (barrier.wait(), server.routes["/file.bin"]())[1]
    try:
        with running_child(slots=2) as child:
            a = make_job(UrlSource(url=server.url("/download")), child.scratch, policy=_policy(server), limits=LIMITS)
            b = make_job(f'<p>job b</p><img src="{server.url("/held-b.png")}">', child.scratch,
                         policy=_policy(server), limits=LIMITS)
            answers = child.render_all([a, b], timeout=120)
            answer_a, answer_b = answers[a.job_id], answers[b.job_id]
            assert isinstance(answer_a, RenderFailed) and answer_a.code is RenderFailure.URL_UNREACHABLE, answer_a
            assert isinstance(answer_b, Rendered) and answer_b.fetched == 1, answer_b
            leftovers = [p for p in _files(child.scratch) if not p.endswith((".pdf", ".png"))]
            assert leftovers == [] or all("chromium-" in p for p in leftovers)
            assert not [p for p in _files(child.scratch) if p.endswith("x.bin")]
    finally:
        server.close()


def _files(root: str) -> list[str]:
    import os

    return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
