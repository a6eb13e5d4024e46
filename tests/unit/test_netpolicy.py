"""The render child's network policy, without a browser: address classes, allowlists, DNS checks."""

from __future__ import annotations

import pytest

from render_child.netpolicy import (
    Blocked,
    Fetcher,
    classify_ip,
    host_matches,
    is_trusted_private,
    resolve_checked,
)
from shared.messages import NetworkPolicy, RenderLimits

pytestmark = [pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("240.0.0.1", ""),  # class E: reserved (Python calls it private)
        ("255.255.255.255", ""),
        ("198.18.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("192.0.2.1", ""),  # TEST-NET documentation range: not global
    ],
)
def test_blocked_addresses(ip: str, reason: str) -> None:
    got = classify_ip(ip)
    assert got is not None, ip
    assert reason.lower() in got.lower()


@pytest.mark.parametrize(
    "ip", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(ip: str) -> None:
    assert classify_ip(ip) is None


@pytest.mark.parametrize(
    ("host", "port", "patterns", "expected"),
    [
        ("cdn.example.com", 443, ["cdn.example.com"], True),
        ("CDN.Example.com.", 443, ["cdn.example.com"], True),
        ("img.cdn.example.com", 443, ["*.cdn.example.com"], True),
        ("a.b.cdn.example.com", 443, ["*.cdn.example.com"], True),
        ("cdn.example.com", 443, ["*.cdn.example.com"], False),  # the wildcard means subdomains
        ("evilcdn.example.com", 443, ["*.cdn.example.com"], False),
        ("cdn.example.com.evil.net", 443, ["cdn.example.com"], False),
        ("localhost", 8080, ["localhost:8080"], True),
        ("localhost", 8081, ["localhost:8080"], False),
        ("::1", 80, ["::1"], True),
        ("::1", 80, ["[::1]:80"], True),
        ("::1", 81, ["[::1]:80"], False),
        ("example.com", 80, [], False),
    ],
)
def test_host_matches(host: str, port: int, patterns: list[str], expected: bool) -> None:
    assert host_matches(host, port, patterns) is expected


def test_trusted_private_needs_host_and_port() -> None:
    policy = NetworkPolicy(trusted_private_hosts=["localhost:8080", "[::1]:9000"])
    assert is_trusted_private("localhost", 8080, policy)
    assert not is_trusted_private("localhost", 8081, policy)
    assert is_trusted_private("::1", 9000, policy)


def _resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


def test_every_resolved_address_is_checked() -> None:
    policy = NetworkPolicy(allowed_hosts=["mixed.example"])
    resolver = _resolver({"mixed.example": ["93.184.216.34", "10.0.0.5"], "ok.example": ["93.184.216.34"]})
    with pytest.raises(Blocked, match=r"10\.0\.0\.5.*private"):
        resolve_checked("mixed.example", 443, policy, resolver)
    assert resolve_checked("ok.example", 443, policy, resolver) == ["93.184.216.34"]


def test_trusted_private_host_may_resolve_private_but_never_metadata() -> None:
    policy = NetworkPolicy(trusted_private_hosts=["dev.local:8080", "meta.local:80"])
    resolver = _resolver({"dev.local": ["127.0.0.1"], "meta.local": ["169.254.169.254"]})
    assert resolve_checked("dev.local", 8080, policy, resolver) == ["127.0.0.1"]
    with pytest.raises(Blocked, match="loopback"):
        resolve_checked("dev.local", 8081, policy, resolver)
    with pytest.raises(Blocked, match="metadata"):
        resolve_checked("meta.local", 80, policy, resolver)


def test_ip_literals_are_checked_without_dns() -> None:
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("DNS must not be used for an IP literal")

    policy = NetworkPolicy()
    for host in ("10.0.0.1", "[::1]", "169.254.169.254"):
        with pytest.raises(Blocked):
            resolve_checked(host, 80, policy, no_dns)


@pytest.mark.parametrize(
    ("url", "main", "reason"),
    [
        ("file:///etc/passwd", False, "scheme file"),
        ("ftp://cdn.example.com/x", False, "scheme ftp"),
        ("gopher://cdn.example.com/x", False, "scheme gopher"),
        ("http://user:pw@cdn.example.com/x", False, "credentials"),
        ("https://other.example.com/x.png", False, "not in allowed_hosts"),
        ("https://cdn.example.com/page", True, "not in allowed_url_hosts"),
        ("https://pages.example.com/x.png", False, "not in allowed_hosts"),
    ],
)
def test_check_url_refuses(url: str, main: bool, reason: str) -> None:
    fetcher = Fetcher(
        policy=NetworkPolicy(allowed_hosts=["cdn.example.com"], allowed_url_hosts=["pages.example.com"]),
        limits=RenderLimits(),
    )
    with pytest.raises(Blocked, match=reason):
        fetcher.check_url(url, main_document=main)


def test_fetch_refuses_other_methods_and_private_addresses_without_connecting() -> None:
    fetcher = Fetcher(
        policy=NetworkPolicy(allowed_hosts=["internal.example"]),
        limits=RenderLimits(),
        resolver=_resolver({"internal.example": ["192.168.0.10"]}),
    )
    with pytest.raises(Blocked, match="method POST"):
        fetcher.fetch("http://internal.example/", main_document=False, method="POST", headers={})
    with pytest.raises(Blocked, match="private"):
        fetcher.fetch("http://internal.example/", main_document=False, method="GET", headers={})
    assert fetcher.fetched == 0
