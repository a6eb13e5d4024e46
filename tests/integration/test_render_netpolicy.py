"""The network policy with a real Chromium: a loopback listener must see zero hits."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from render_helpers import ChildHandle, LocalServer, make_job, requires_chromium, running_child

from shared.messages import NetworkPolicy, Rendered, RenderFailed, RenderLimits
from shared.payload import UrlSource

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a0c9b1a60000000049454e44ae426082"
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def child() -> Iterator[ChildHandle]:
    with running_child() as handle:
        yield handle


@pytest.fixture
def victim() -> Iterator[LocalServer]:
    """The loopback service an attacker wants to reach. It must never see a request."""
    server = LocalServer("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def victim6() -> Iterator[LocalServer | None]:
    if not _has_ipv6_loopback():
        yield None
        return
    server = LocalServer("::1")
    yield server
    server.close()


@pytest.fixture
def trusted(victim: LocalServer) -> Iterator[LocalServer]:
    """A trusted dev server (allowed on a private address) that redirects to the victim."""
    css = (
        f"@import url({victim.url('/imported.css')});\n"
        f"body {{ background-image: url({victim.url('/css-bg.png')}); }}\n"
    ).encode()
    server = LocalServer(
        "127.0.0.1",
        routes={
            "/logo.png": lambda: (200, {"Content-Type": "image/png"}, PNG_1PX),
            "/redirect.png": lambda: (302, {"Location": victim.url("/redirected.png")}, b""),
            "/style.css": lambda: (200, {"Content-Type": "text/css"}, css),
            "/page": lambda: (200, {"Content-Type": "text/html"}, b"<h1>trusted page</h1>"),
            "/to-victim": lambda: (302, {"Location": victim.url("/main-redirect")}, b""),
        },
    )
    yield server
    server.close()


def _blocked_map(answer: Rendered | RenderFailed) -> dict[str, str]:
    return {item.url: item.reason for item in answer.blocked}


def test_nothing_reaches_blocked_addresses(
    child: ChildHandle, victim: LocalServer, victim6: LocalServer | None, trusted: LocalServer
) -> None:
    v = victim.url
    hostile = {
        "file": "file:///etc/passwd",
        "loopback": v("/img"),
        "dns-to-loopback": f"http://localhost:{victim.port}/dns.png",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "private": "http://10.0.0.1/internal.png",
        "not-allowlisted": "http://evil.example/x.png",
        "redirect": trusted.url("/redirect.png"),
        "iframe": v("/frame"),
        "style-import": f"http://localhost:{victim.port}/style-import.css",
    }
    if victim6 is not None:
        hostile["ipv6-loopback"] = victim6.url("/img6")
    html = f"""<!doctype html>
    <link rel="stylesheet" href="{trusted.url("/style.css")}">
    <link rel="prefetch" href="{v("/prefetch")}"><link rel="preconnect" href="{v("/")}">
    <style>@import url("{hostile["style-import"]}");
      div.x {{ background: url({v("/inline-bg.png")}); }}</style>
    <meta http-equiv="refresh" content="0; url={v("/meta-refresh")}">
    <img src="{hostile["file"]}"><iframe src="{hostile["file"]}"></iframe>
    <img src="{hostile["loopback"]}"><img src="{hostile["dns-to-loopback"]}">
    <img src="{hostile["metadata"]}"><img src="{hostile["private"]}"><img src="{hostile["not-allowlisted"]}">
    <img src="{hostile["redirect"]}"><iframe src="{hostile["iframe"]}"></iframe>
    {f'<img src="{hostile["ipv6-loopback"]}">' if victim6 else ""}
    <img src="{trusted.url("/logo.png")}"><div class="x">hello</div>
    """
    policy = NetworkPolicy(
        allowed_hosts=["127.0.0.1", "localhost", "::1", "169.254.169.254", "10.0.0.1"],
        trusted_private_hosts=[f"127.0.0.1:{trusted.port}"],
    )
    answer = child.render(
        make_job(html, child.scratch, policy=policy, limits=RenderLimits(navigation_timeout_ms=10_000)),
        timeout=40,
    )
    assert isinstance(answer, Rendered), answer
    assert victim.hits == []
    if victim6 is not None:
        assert victim6.hits == []
    blocked = _blocked_map(answer)
    assert "scheme file" in blocked[hostile["file"]]
    assert "loopback" in blocked[hostile["loopback"]]
    assert "127.0.0.1" in blocked[hostile["dns-to-loopback"]]
    assert "metadata" in blocked[hostile["metadata"]]
    assert "private" in blocked[hostile["private"]]
    assert "not in allowed_hosts" in blocked[hostile["not-allowlisted"]]
    assert "redirect to" in blocked[hostile["redirect"]]
    assert "loopback" in blocked[hostile["redirect"]]
    assert "loopback" in blocked[hostile["iframe"]]
    assert "loopback" in blocked[hostile["style-import"]]
    assert "loopback" in blocked[v("/imported.css")]  # @import inside an allowed stylesheet
    assert "loopback" in blocked[v("/css-bg.png")]  # url() inside an allowed stylesheet
    assert "loopback" in blocked[v("/inline-bg.png")]
    if victim6 is not None:
        assert "loopback" in blocked[hostile["ipv6-loopback"]]
    # the allowed resources did load
    assert answer.fetched >= 2
    assert {hit.path for hit in trusted.hits} >= {"/logo.png", "/style.css", "/redirect.png"}


def test_private_address_is_not_even_attempted(child: ChildHandle) -> None:
    policy = NetworkPolicy(allowed_hosts=["10.0.0.1"])
    html = '<img src="http://10.0.0.1:81/x.png">'
    answer = child.render(
        make_job(html, child.scratch, policy=policy, limits=RenderLimits(navigation_timeout_ms=3000))
    )
    assert isinstance(answer, Rendered), answer
    # Refused by the policy's address check (its reason names it), not by a failed connect.
    assert "private" in _blocked_map(answer)["http://10.0.0.1:81/x.png"]


def test_url_source_not_allowlisted_is_permanent(child: ChildHandle, victim: LocalServer) -> None:
    answer = child.render(make_job(UrlSource(url="http://evil.example/page"), child.scratch))
    assert isinstance(answer, RenderFailed)
    assert answer.category == "permanent"
    assert answer.message.startswith("URL host not allowed")
    # allowlisted as a page, but resolving to loopback without being trusted
    url = f"http://localhost:{victim.port}/page"
    policy = NetworkPolicy(allowed_url_hosts=["localhost"])
    answer = child.render(make_job(UrlSource(url=url), child.scratch, policy=policy))
    assert isinstance(answer, RenderFailed), answer
    assert answer.category == "permanent"
    assert "loopback" in answer.message
    assert victim.hits == []


def test_url_source_on_a_trusted_server(
    child: ChildHandle, trusted: LocalServer, victim: LocalServer
) -> None:
    policy = NetworkPolicy(
        allowed_url_hosts=[f"127.0.0.1:{trusted.port}"], trusted_private_hosts=[f"127.0.0.1:{trusted.port}"]
    )
    answer = child.render(make_job(UrlSource(url=trusted.url("/page")), child.scratch, policy=policy))
    assert isinstance(answer, Rendered), answer
    assert answer.pages == 1
    # its redirect to the victim is refused (the victim's port is not trusted)
    policy.allowed_url_hosts.append("127.0.0.1")
    answer = child.render(make_job(UrlSource(url=trusted.url("/to-victim")), child.scratch, policy=policy))
    assert isinstance(answer, RenderFailed), answer
    assert answer.category == "permanent"
    assert "redirect to" in answer.message
    assert victim.hits == []


def test_fetch_size_cap(child: ChildHandle) -> None:
    big = LocalServer(routes={"/big.png": lambda: (200, {"Content-Type": "image/png"}, b"\0" * 200_000)})
    try:
        policy = NetworkPolicy(allowed_hosts=["127.0.0.1"], trusted_private_hosts=[f"127.0.0.1:{big.port}"])
        limits = RenderLimits(max_fetch_bytes=100_000)
        answer = child.render(
            make_job(f'<img src="{big.url("/big.png")}">', child.scratch, policy=policy, limits=limits)
        )
        assert isinstance(answer, Rendered), answer
        assert "max_fetch_bytes" in _blocked_map(answer)[big.url("/big.png")]
    finally:
        big.close()
