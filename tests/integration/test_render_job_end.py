"""Hostile corpus: nothing of a finished job outlives it on the warm page.

User A's document keeps working after its job: it refreshes itself after 1 s (to a
loopback URL), and two iframes load pages on an allowed host that refresh after 1 s,
one to a loopback URL, one to an allowed URL carrying A's token, whose page holds an
<img> the server never answers. Before, the warm page kept A's document until the next
job replaced it; its requests waited unhandled between jobs and ran inside job B, with
B's network policy and accounting (B reported A's blocked loopback URL and a fetched
subresource, and the host got A's token during B's job).
"""

from __future__ import annotations

import threading

import pytest
from render_helpers import Hit, LocalServer, make_job, requires_chromium, running_child

from shared.messages import NetworkPolicy, Rendered, RenderLimits

pytestmark = [pytest.mark.timeout(120), pytest.mark.chromium, requires_chromium]

TOKEN = "a-secret-token-of-user-a"
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a0c9b1a60000000049454e44ae426082"
)


def _has_token(hit: Hit) -> bool:
    return TOKEN in hit.path


def test_a_finished_jobs_document_makes_no_request_during_the_next_job() -> None:
    release = threading.Event()
    victim = LocalServer()  # loopback, not trusted: every request to it is refused

    def held_image() -> tuple[int, dict[str, str], bytes]:
        release.wait(60)  # the response is held open across the job's end
        return 200, {"Content-Type": "image/png"}, PNG_1PX

    loopback = victim.url("/loopback-of-user-a")
    host = LocalServer(
        routes={
            "/to-loopback": lambda: (200, {"Content-Type": "text/html"},
                                     f'<meta http-equiv="refresh" content="1; url={loopback}"><p>a</p>'.encode()),
            "/to-token": lambda: (200, {"Content-Type": "text/html"},
                                  f'<meta http-equiv="refresh" content="1; url=/page?t={TOKEN}"><p>b</p>'.encode()),
            "/page": lambda: (200, {"Content-Type": "text/html"}, f'<img src="/held.png?t={TOKEN}">'.encode()),
            "/held.png": held_image,
        }
    )
    try:
        policy = NetworkPolicy(
            allowed_hosts=["127.0.0.1"], trusted_private_hosts=[host.netloc]
        )
        limits = RenderLimits(navigation_timeout_ms=15_000)
        a_html = (f'<meta http-equiv="refresh" content="1; url={victim.url("/top-of-user-a")}">'
                  f'<iframe src="{host.url("/to-loopback")}"></iframe><iframe src="{host.url("/to-token")}"></iframe>')
        with running_child() as child:
            a = child.render(make_job(a_html, child.scratch, policy=policy, limits=limits), timeout=60)
            assert isinstance(a, Rendered), a
            a_end = len(host.hits)
            # The refreshes are due 1 s after A's load. A's document is gone: nothing of
            # it reaches the host any more (before, its requests waited, unhandled, for B).
            assert host.wait_for_hit(_has_token, after=a_end, timeout=3) is None
            b = child.render(make_job("<p>plain</p>", child.scratch, policy=policy, limits=limits), timeout=60)
            assert isinstance(b, Rendered), b
            b_end = len(host.hits)
            assert b.blocked == [], b.blocked  # A's loopback refresh is not B's
            assert b.fetched == 0
            assert [hit.path for hit in host.hits[a_end:b_end]] == []  # nothing of A during B
            assert host.wait_for_hit(_has_token, after=b_end, timeout=2) is None  # nor after
            # and the child still renders what B's own document asks for
            c_html = f'<img src="{host.url("/to-loopback")}">'
            c = child.render(make_job(c_html, child.scratch, policy=policy, limits=limits), timeout=60)
            assert isinstance(c, Rendered) and c.fetched == 1, c
        assert victim.hits == []
    finally:
        release.set()
        host.close()
        victim.close()
