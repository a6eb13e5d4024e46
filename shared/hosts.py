"""Host names and allowlist patterns: one rule for the render child's fetcher and the API's checks."""

from __future__ import annotations

import idna


def normalize_host(host: str) -> str:
    """Lower case, without the one trailing dot of an absolute name (``example.com.``); a second
    dot stays, and is then an empty label."""
    host = host.strip().lower()
    return host[:-1] if host.endswith(".") else host


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


def host_problem(host: str) -> str | None:
    """Why `host` cannot be a DNS name or IP literal (an empty or over-long label, a name IDNA
    cannot encode), or None. Checked before any lookup: the resolver raises on these, not OSError."""
    name = normalize_host(host).strip("[]")
    if ":" in name:  # an IPv6 literal; the URL parser has checked it
        return None
    if len(name) > 253:
        return f"the host name is {len(name)} characters; at most 253"
    try:
        encoded = name.encode("idna")
    except UnicodeError:
        return f"{name!r} is not a valid host name (an empty or over-long label)"
    if any(not label or len(label) > 63 for label in encoded.split(b".")):
        return f"{name!r} is not a valid host name (an empty or over-long label)"
    if b"xn--" in encoded:
        try:  # what httpx does with the name before any request: an undecodable A-label raises there
            idna.decode(encoded)
        except (idna.IDNAError, UnicodeError) as exc:
            return f"{name!r} is not a valid internationalised host name: {exc}"
    return None
