"""Nothing of one job is visible to the next on the same warm child: cookies, cache, DOM."""

from __future__ import annotations

import io

import pypdf
import pytest
from render_helpers import LocalServer, make_job, requires_chromium, running_child

from shared.messages import NetworkPolicy, Rendered
from shared.payload import UrlSource

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a0c9b1a60000000049454e44ae426082"
)
CACHED = {"Cache-Control": "public, max-age=3600", "Set-Cookie": "sid=job-one-secret; Path=/; Max-Age=3600"}


def _text(answer: Rendered) -> str:
    with open(answer.output_path, "rb") as fh:
        reader = pypdf.PdfReader(io.BytesIO(fh.read()))
    return " ".join(page.extract_text() for page in reader.pages)


def test_cookies_cache_and_dom_do_not_leak_between_jobs() -> None:
    server = LocalServer(
        routes={
            "/one": lambda: (
                200,
                {"Content-Type": "text/html", **CACHED},
                b"<h1>JOB ONE SECRET</h1><img src='/pixel.png'><link rel=stylesheet href='/s.css'>",
            ),
            "/two": lambda: (200, {"Content-Type": "text/html"}, b"<h1>job two</h1><img src='/pixel.png'>"),
            "/pixel.png": lambda: (200, {"Content-Type": "image/png", **CACHED}, PNG_1PX),
            "/s.css": lambda: (200, {"Content-Type": "text/css", **CACHED}, b"h1 { color: red }"),
        }
    )
    try:
        netloc = f"127.0.0.1:{server.port}"
        policy = NetworkPolicy(
            allowed_hosts=[netloc], allowed_url_hosts=[netloc], trusted_private_hosts=[netloc]
        )
        with running_child() as child:
            one = child.render(make_job(UrlSource(url=server.url("/one")), child.scratch, policy=policy))
            assert isinstance(one, Rendered), one
            assert "JOB ONE SECRET" in _text(one)
            two = child.render(make_job(UrlSource(url=server.url("/two")), child.scratch, policy=policy))
            assert isinstance(two, Rendered), two
            three = child.render(make_job("<p>job three</p>", child.scratch))
            assert isinstance(three, Rendered), three
            image = child.render(make_job("<p>job four</p>", child.scratch, export_type="image"))
            assert isinstance(image, Rendered), image
            text_two, text_three = _text(two), _text(three)
        paths = [hit.path for hit in server.hits]
        assert paths.count("/pixel.png") == 2, paths  # fetched again: no cache survived job one
        assert all("cookie" not in hit.headers for hit in server.hits), [h.headers for h in server.hits]
        assert "job two" in text_two and "SECRET" not in text_two
        assert "job three" in text_three and "SECRET" not in text_three and "job two" not in text_three
    finally:
        server.close()
