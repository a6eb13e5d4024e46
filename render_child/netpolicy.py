"""The render child's network policy: which requests Chromium may make, and the fetcher.

Chromium has no network of its own (see :data:`LOCKDOWN_ARGS`); every request is
routed to :class:`Fetcher`, which decides per request and, when allowed, fetches the
resource itself in Python after checking every resolved address, connecting to the
validated address (pinned, so DNS rebinding cannot swap it), and re-checking every
redirect hop. Nothing here touches Playwright, so it can be unit-tested without a browser.
Fetches are async: a page's subresources are fetched concurrently, through one client
the child's jobs share (:func:`pinned_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import ipaddress
import socket
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any


def _import_httpx_without_cli() -> None:
    """Import httpx without its command line client.

    httpx's ``__init__`` imports ``httpx._main`` (click, rich, pygments) whenever they
    are installed, about 6 MB in every render child that never uses them; with
    ``click`` unimportable it falls back to a stub ``main``. Only when httpx is not
    loaded yet (the supervisor process is left alone).
    """
    if "httpx" in sys.modules or "click" in sys.modules:
        return
    sys.modules["click"] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    finally:
        del sys.modules["click"]


_import_httpx_without_cli()
import httpx  # noqa: E402

from shared.hosts import host_matches, normalize_host  # noqa: E402
from shared.messages import BlockedRequest, NetworkPolicy, RenderLimits  # noqa: E402

# Chromium flags that take its own network away: every host name resolves to nothing
# (IP literals included), and anything that still tried would go to a dead proxy,
# loopback included ("<-loopback>" removes Chromium's implicit proxy bypass). Requests
# Playwright cannot route (<link rel=prefetch>, preconnect) therefore go nowhere.
LOCKDOWN_ARGS: tuple[str, ...] = (
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
)

METADATA_IPS = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba
    }
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_BENCHMARK = ipaddress.ip_network("198.18.0.0/15")

MAX_REDIRECTS = 5
DNS_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
FETCH_BUDGET_S = 20.0  # one resource, all redirect hops included

_FORWARDED_REQUEST_HEADERS = ("accept", "accept-language", "user-agent", "range")
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "content-encoding",  # httpx already decoded the body
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "upgrade",
        "alt-svc",
        "strict-transport-security",
        "clear-site-data",
        "report-to",
        "nel",
    }
)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# (test, why the address is refused), first match wins: the order is the policy.
_REFUSED: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda a: a in METADATA_IPS, "cloud metadata address"),
    (lambda a: a.is_unspecified, "unspecified address"),
    (lambda a: a.is_loopback, "loopback address"),
    (lambda a: a.is_link_local, "link-local address"),
    (lambda a: a.is_multicast, "multicast address"),
    (lambda a: isinstance(a, ipaddress.IPv4Address) and a in _CGNAT, "shared (CGNAT) address"),
    (lambda a: isinstance(a, ipaddress.IPv4Address) and a in _BENCHMARK, "reserved address"),
    (lambda a: a.is_private, "private address"),
    (lambda a: a.is_reserved, "reserved address"),
    (lambda a: not a.is_global, "non-global address"),
)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, Teredo), if any."""
    embedded = addr.ipv4_mapped or addr.sixtofour
    if embedded is None and addr in _NAT64:
        embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if embedded is None and addr.teredo is not None:
        embedded = addr.teredo[1]
    return embedded


def classify_ip(ip: IPAddress | str) -> str | None:
    """Why an address must not be contacted, or None when it is a public unicast address."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return "link-local address"
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            inner = classify_ip(embedded)
            return f"IPv4-embedding address of a {inner}" if inner else None
    return next((why for refused, why in _REFUSED if refused(addr)), None)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def is_trusted_private(host: str, port: int, policy: NetworkPolicy) -> bool:
    host = normalize_host(host)
    for entry in policy.trusted_private_hosts:
        entry = normalize_host(entry)
        name, sep, port_text = entry.rpartition(":")
        if not sep or not port_text.isdigit():
            continue
        name = name.strip("[]")
        if name == host and int(port_text) == port:
            return True
    return False


class Blocked(Exception):
    """A request the policy refuses; ``reason`` goes to the job's blocked list."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FetchFailed(Exception):
    """The request was allowed but the fetch failed (timeout, refused, ...)."""


@dataclass
class FetchResult:
    status: int
    headers: dict[str, str]
    body: bytes
    final_url: str


Resolver = Callable[[str, int], list[str]]


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in seen:
            seen.append(ip)
    return seen


_DNS_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dns")
_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


def resolve_checked(
    host: str, port: int, policy: NetworkPolicy, resolver: Resolver | None = None
) -> list[str]:
    """Resolve ``host`` and check every address; raise :class:`Blocked` if any is refused."""
    host = normalize_host(host).strip("[]")
    trusted = is_trusted_private(host, port, policy)
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        ips = [str(literal)]
    else:
        future = _DNS_POOL.submit(resolver or _system_resolver, host, port)
        try:
            ips = future.result(timeout=DNS_TIMEOUT_S)
        except FutureTimeout:
            raise FetchFailed(f"DNS lookup of {host} timed out") from None
        except OSError as exc:
            raise FetchFailed(f"DNS lookup of {host} failed: {exc}") from None
    if not ips:
        raise FetchFailed(f"DNS lookup of {host} returned no address")
    for ip in ips:
        addr = ipaddress.ip_address(ip.split("%")[0])
        reason = classify_ip(ip)
        if reason is None:
            continue
        if addr in METADATA_IPS or not trusted:
            if literal is not None:
                raise Blocked(f"{host} is a {reason}")
            raise Blocked(f"{host} resolves to {ip}, a {reason}")
    return ips


def parse_http_url(url: str) -> httpx.URL:
    """An http(s) URL with a host and no credentials (the fetcher's and the webhooks'); raise :class:`Blocked`."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        raise Blocked("malformed URL") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise Blocked(f"scheme {scheme or '(none)'}: not allowed")
    if parsed.userinfo:
        raise Blocked("credentials in URL are not allowed")
    try:
        host = parsed.host  # httpx decodes xn-- labels here (idna): an invalid one raises
    except UnicodeError as exc:  # idna.IDNAError is a UnicodeError
        raise Blocked(f"the host is not a valid internationalised name: {exc}") from None
    if not host:
        raise Blocked("URL has no host")
    return parsed


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """The shared client's jar keeps nothing: a cookie of one job's fetch never rides on another's."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class PinnedTransport(httpx.AsyncBaseTransport):
    """One connection pool per (scheme, host, port, pinned address), as the fetcher's
    per-job clients had (at most 4 connections, 2 kept alive, each), shared by every job
    of the child: a connection is reused only for the same host on the same checked
    address, so a TLS session made for one host never carries another's request."""

    MAX_POOLS = 64

    def __init__(self) -> None:
        self._pools: OrderedDict[tuple[str, str, int, str], httpx.AsyncHTTPTransport] = OrderedDict()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.scheme, str(request.extensions.get("sni_hostname", "")), url.port or 0, url.host)
        pool = self._pools.get(key)
        if pool is None:
            pool = httpx.AsyncHTTPTransport(
                verify=_ssl_context(), trust_env=False,
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            )
            self._pools[key] = pool
            while len(self._pools) > self.MAX_POOLS:  # the least recently used host goes
                _, old = self._pools.popitem(last=False)
                await old.aclose()
        self._pools.move_to_end(key)
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            with contextlib.suppress(Exception):
                await pool.aclose()


def pinned_client() -> httpx.AsyncClient:
    """The one async client a child's fetchers share (see :class:`PinnedTransport`)."""
    return httpx.AsyncClient(
        transport=PinnedTransport(),
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
    )


@dataclass
class Fetcher:
    """One job's fetcher: decides, fetches, and records what it blocked.

    ``client`` is the child's shared :func:`pinned_client`; without one (a caller
    with no event loop of its own) :meth:`fetch` uses a client of its own for the call.
    """

    policy: NetworkPolicy
    limits: RenderLimits
    resolver: Resolver | None = None
    client: httpx.AsyncClient | None = None
    blocked: list[BlockedRequest] = field(default_factory=list)
    fetched: int = 0

    def record(self, url: str, reason: str) -> None:
        if len(self.blocked) < 200:
            self.blocked.append(BlockedRequest(url=url[:2048], reason=reason))

    def check_url(self, url: str, *, main_document: bool) -> httpx.URL:
        """Scheme and host-allowlist checks (no DNS). Raise :class:`Blocked`."""
        parsed = parse_http_url(url)
        host = parsed.host
        port = parsed.port or _default_port(parsed.scheme.lower())
        allowed = self.policy.allowed_url_hosts if main_document else self.policy.allowed_hosts
        if not host_matches(host, port, allowed):
            which = "allowed_url_hosts" if main_document else "allowed_hosts"
            raise Blocked(f"host {host} is not in {which}")
        return parsed

    def fetch(self, url: str, *, main_document: bool, method: str, headers: dict[str, str]) -> FetchResult:
        """:meth:`fetch_async` for a caller without an event loop."""
        return asyncio.run(self.fetch_async(url, main_document=main_document, method=method, headers=headers))

    async def fetch_async(
        self, url: str, *, main_document: bool, method: str, headers: dict[str, str]
    ) -> FetchResult:
        """Fetch an allowed URL; raise :class:`Blocked` or :class:`FetchFailed`."""
        if method.upper() not in ("GET", "HEAD"):
            raise Blocked(f"method {method} not allowed")
        if self.client is not None:
            return await self._follow(self.client, url, main_document, method, headers)
        async with pinned_client() as client:
            return await self._follow(client, url, main_document, method, headers)

    async def _follow(
        self, client: httpx.AsyncClient, url: str, main_document: bool, method: str, headers: dict[str, str]
    ) -> FetchResult:
        deadline = time.monotonic() + min(FETCH_BUDGET_S, self.limits.navigation_timeout_ms / 1000)
        forward = {k: v for k, v in headers.items() if k.lower() in _FORWARDED_REQUEST_HEADERS}
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            try:
                parsed = self.check_url(current, main_document=main_document)
                response = await self._fetch_one(client, parsed, method, forward, deadline)
            except Blocked as exc:
                if hop == 0:
                    raise
                raise Blocked(f"redirect to {current[:300]}: {exc.reason}") from None
            location = response.headers.get("location")
            if 300 <= response.status < 400 and location and response.status != 304:
                current = str(parsed.join(location))
                continue
            response.final_url = current
            self.fetched += 1
            return response
        raise Blocked(f"more than {MAX_REDIRECTS} redirects")

    async def _fetch_one(
        self, client: httpx.AsyncClient, url: httpx.URL, method: str, headers: dict[str, str], deadline: float
    ) -> FetchResult:
        scheme = url.scheme.lower()
        host = normalize_host(url.host)
        port = url.port or _default_port(scheme)
        ips = await _resolve_checked_async(host, port, self.policy, self.resolver)
        last_error: Exception | None = None
        for ip in ips[:2]:
            try:
                return await self._request_pinned(client, url, ip, method, headers, deadline)
            except httpx.TransportError as exc:
                last_error = exc
                if isinstance(exc, httpx.TimeoutException):
                    break
        raise FetchFailed(f"fetch of {host} failed: {type(last_error).__name__}: {last_error}")

    async def _request_pinned(
        self, client: httpx.AsyncClient, url: httpx.URL, ip: str, method: str, headers: dict[str, str],
        deadline: float,
    ) -> FetchResult:
        host = normalize_host(url.host)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchFailed("fetch time budget exhausted")
        timeout = httpx.Timeout(min(READ_TIMEOUT_S, remaining), connect=min(CONNECT_TIMEOUT_S, remaining))
        pinned = url.copy_with(host=ip.split("%")[0])
        request = client.build_request(
            method,
            pinned,
            headers={**headers, "host": url.netloc.decode("ascii"), "accept-encoding": "gzip, deflate"},
            timeout=timeout,
            extensions={"sni_hostname": host},
        )
        request.headers.pop("cookie", None)
        response = await client.send(request, stream=True)
        try:
            body = await self._read_capped(response, deadline)
        finally:
            await response.aclose()
        out_headers = {
            k: v for k, v in response.headers.items() if k.lower() not in _DROPPED_RESPONSE_HEADERS
        }
        return FetchResult(response.status_code, out_headers, body, str(url))

    async def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        cap = self.limits.max_fetch_bytes
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > cap:
            raise Blocked(f"response is {length} bytes, more than max_fetch_bytes ({cap})")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > cap:
                raise Blocked(f"response is more than max_fetch_bytes ({cap})")
            if time.monotonic() > deadline:
                raise FetchFailed("fetch time budget exhausted")
            chunks.append(chunk)
        # one chunk (the usual small image) is the body itself: b"".join of one bytes returns it
        return b"".join(chunks)


async def _resolve_checked_async(
    host: str, port: int, policy: NetworkPolicy, resolver: Resolver | None
) -> list[str]:
    """:func:`resolve_checked` off the event loop when it needs DNS (an address literal needs none)."""
    try:
        ipaddress.ip_address(normalize_host(host).strip("[]"))
    except ValueError:
        return await asyncio.to_thread(resolve_checked, host, port, policy, resolver)
    return resolve_checked(host, port, policy, resolver)
