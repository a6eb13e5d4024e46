"""Host names and allowlist patterns: one rule for the render child's fetcher and the API's checks."""

from __future__ import annotations


def normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def host_matches(host: str, port: int, patterns: list[str]) -> bool:
    """``host`` matches an entry ``name``, ``name:port``, ``*.suffix`` or ``*.suffix:port``."""
    host = normalize_host(host)
    for raw in patterns:
        pattern = normalize_host(raw)
        want_port: int | None = None
        if pattern.startswith("["):  # [v6]:port or [v6]
            end = pattern.find("]")
            rest = pattern[end + 1 :]
            pattern_host = pattern[1:end]
            if rest.startswith(":") and rest[1:].isdigit():
                want_port = int(rest[1:])
        else:
            pattern_host, sep, port_text = pattern.rpartition(":")
            if not sep or not port_text.isdigit() or ":" in pattern_host:
                pattern_host = pattern
            else:
                want_port = int(port_text)
        if want_port is not None and want_port != port:
            continue
        if pattern_host.startswith("*."):
            if host.endswith(pattern_host[1:]) and len(host) > len(pattern_host) - 1:
                return True
        elif host == pattern_host:
            return True
    return False
