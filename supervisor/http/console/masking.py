"""What the console may show of a job: no payload HTML, no secrets, no one's email in full.

Free text (error messages, blocked request URLs) goes through :func:`mask_text`:
emails are masked, and URLs lose their credentials and query strings (where
signed links and tokens live).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def mask_email(address: str) -> str:
    """alice@example.com -> a***@e***.com"""
    local, _, domain = address.partition("@")
    host, dot, tld = domain.rpartition(".")
    if not dot:
        host, tld = domain, ""
    return f"{local[:1]}***@{host[:1]}***{dot}{tld}"


def mask_url(url: str) -> str:
    """scheme://host[:port]/path, without user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable URL)"
    if not parts.scheme or not host:
        return _EMAIL.sub(lambda m: mask_email(m.group(0)), url.split("?", 1)[0])
    suffix = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{suffix}"


def mask_text(text: str | None) -> str:
    if not text:
        return ""
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return _EMAIL.sub(lambda m: mask_email(m.group(0)), text)


def payload_summary(payload: Any, export_type: str) -> list[tuple[str, str]]:
    """(label, value) pairs describing a payload without its content."""
    if not isinstance(payload, dict):
        return [("payload", "not an object (the worker fails it as validation)")]
    rows: list[tuple[str, str]] = []
    source = payload.get("source")
    if isinstance(source, dict):
        kind = str(source.get("kind", "?"))
        rows.append(("source", kind))
        if kind == "html":
            rows.append(("html", f"{len(str(source.get('html', '')).encode())} bytes (content not shown)"))
        elif kind == "menu":
            size = len(json.dumps(source.get("menu", {})).encode())
            rows.append(("menu", f"{size} bytes of menu document (content not shown)"))
            rows.append(("template", str(source.get("template", "classic"))))
        elif kind == "url":
            rows.append(("url", mask_url(str(source.get("url", "")))))
        elif kind == "test-template":
            rows.append(("template", str(source.get("name", "?"))))
    else:
        rows.append(("source", "missing"))
    options = payload.get(export_type if export_type == "pdf" else "image")
    if isinstance(options, dict) and options:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(options.items()) if not isinstance(v, dict | list))
        rows.append((f"{export_type} options", shown))
    if payload.get("email"):
        rows.append(("email", mask_email(str(payload["email"]))))
    if payload.get("filename"):
        rows.append(("filename", mask_text(str(payload["filename"]))))
    return rows
