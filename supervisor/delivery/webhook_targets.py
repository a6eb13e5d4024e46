"""Which URLs a webhook may target: the render side's address rules, applied to callbacks.

One set of rules for creation (the API and the CLI refuse a bad ``webhook_url``
with 422) and for every delivery (the name is resolved again and each address
checked, then the connection is pinned to a checked address, so DNS rebinding
between check and connect cannot swap it):

- https only; http only for a ``host:port`` in TRUSTED_PRIVATE_HOSTS;
- no credentials in the URL;
- WEBHOOK_ALLOWED_HOSTS, when set, must match the host (shared/hosts.py);
- every resolved address passes render_child/netpolicy.py's deny list (private,
  loopback, link-local, CGNAT, metadata, ...), the same function the render
  fetcher uses; a trusted host may be private, never a metadata address.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from render_child.netpolicy import (
    Blocked,
    FetchFailed,
    Resolver,
    is_trusted_private,
    parse_http_url,
    resolve_checked,
)
from shared.config import ConfigError, Settings
from shared.hosts import host_matches, host_problem, normalize_host
from shared.messages import NetworkPolicy

MAX_URL_LENGTH = 2048


class TargetRefused(Exception):
    """The URL breaks a rule; ``reason`` says which (the 422's message)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TargetUnreachable(Exception):
    """The name did not resolve (now): a delivery retries, a creation is refused."""


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    host: str  # as in the URL, for the Host header and TLS SNI
    ips: list[str]  # checked addresses; the connection goes to one of them


def _policy(settings: Settings) -> NetworkPolicy:
    return NetworkPolicy(allowed_hosts=[], allowed_url_hosts=[],
                         trusted_private_hosts=list(settings.render.trusted_private_hosts))


def check_url(url: str, settings: Settings) -> httpx.URL:
    """The rules that need no DNS; raise :class:`TargetRefused`."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = parse_http_url(url)
    except Blocked as exc:
        raise TargetRefused(exc.reason) from None
    scheme = parsed.scheme.lower()
    problem = host_problem(parsed.host)  # before normalising: a second trailing dot is an empty label
    host = normalize_host(parsed.host)
    if problem is not None:
        raise TargetRefused(problem)
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise TargetRefused(f"port {parsed.port} is out of range (1 to 65535)")
    port = parsed.port or (443 if scheme == "https" else 80)
    if scheme == "http" and not is_trusted_private(host, port, _policy(settings)):
        raise TargetRefused(f"http is allowed only for hosts in TRUSTED_PRIVATE_HOSTS; use https for {host}")
    allowed = settings.webhooks.webhook_allowed_hosts
    if allowed and not host_matches(host, port, allowed):
        raise TargetRefused(f"host {host} is not in WEBHOOK_ALLOWED_HOSTS")
    return parsed


def resolve_target(url: str, settings: Settings, resolver: Resolver | None = None) -> Target:
    """All the rules, DNS included (blocking: call it in a thread).

    Raises :class:`TargetRefused` or :class:`TargetUnreachable`.
    """
    parsed = check_url(url, settings)
    host = normalize_host(parsed.host)
    port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
    try:
        ips = resolve_checked(host, port, _policy(settings), resolver)
    except Blocked as exc:
        raise TargetRefused(exc.reason) from None
    except FetchFailed as exc:
        raise TargetUnreachable(str(exc)) from None
    return Target(parsed, host, ips)


async def refuse_unsafe(url: str, settings: Settings) -> str | None:
    """Why a job may not name `url` as its webhook, or None when it may (creation time)."""
    if not settings.webhooks.webhook_secret:
        return "webhooks are not enabled on this worker (WEBHOOK_SECRET is not set)"
    try:
        await asyncio.to_thread(resolve_target, url, settings)
    except TargetRefused as exc:
        return exc.reason
    except TargetUnreachable as exc:
        return f"the host does not resolve: {exc}"
    return None


def check_default_url(settings: Settings) -> None:
    """Refuse a WEBHOOK_DEFAULT_URL that breaks the target rules that need no DNS (deliveries check the rest).

    Called before the queue's settings are written (``migrate`` and ``serve``), so a bad
    default stops the start with the variable's name instead of failing every webhook.
    """
    url = settings.webhooks.webhook_default_url
    if url:
        try:
            check_url(url, settings)
        except TargetRefused as exc:
            raise ConfigError(f"config error: WEBHOOK_DEFAULT_URL is refused: {exc.reason}") from None
