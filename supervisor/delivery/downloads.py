"""What a downloaded file is called, and the ``Content-Disposition`` that says so (RFC 6266).

One name for every download path (``/v1/jobs/{id}/download``, the console, the local
``/files`` links in mails): the payload's ``filename``, else the menu's restaurant and
name (``chez-bars-dinner.pdf``), else the job (``export-{job id}.pdf``); with the file's
extension. The header carries both ``filename="..."`` (an ASCII fallback: ``curl -OJ``
and older clients read only that) and ``filename*=UTF-8''...`` for the real name.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from typing import Any

from shared.vocabulary import OutputFormat

_NOT_IN_SLUG = re.compile(r"[^\w]+")
_NOT_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._\- ]+")
MAX_NAME_CHARS = 110  # payload.filename's 100 characters and an extension


def _extension(content_type: str | None, fallback: str) -> str:
    try:
        return OutputFormat.from_content_type(str(content_type or "")).extension
    except ValueError:
        return fallback


def slug(text: str) -> str:
    """``Chez Bar's — Dinner`` -> ``chez-bar-s-dinner``; letters of every script are kept."""
    return _NOT_IN_SLUG.sub("-", unicodedata.normalize("NFC", text).casefold()).strip("-_")


def download_filename(payload: Any, content_type: str | None, job_id: str, extension: str = "pdf") -> str:
    """The name a downloaded file gets, with its extension (``extension`` when the type is unknown)."""
    ext = _extension(content_type, extension)
    payload = payload if isinstance(payload, dict) else {}
    name = payload.get("filename")
    if isinstance(name, str) and name.strip():
        stem = " ".join(name.split())
    else:
        source = payload.get("source")
        menu = source.get("menu") if isinstance(source, dict) and source.get("kind") == "menu" else None
        parts: list[str] = []
        if isinstance(menu, dict):
            restaurant = menu.get("restaurant")
            if isinstance(restaurant, dict) and isinstance(restaurant.get("name"), str):
                parts.append(restaurant["name"])
            if isinstance(menu.get("name"), str):
                parts.append(menu["name"])
        stem = slug(" ".join(parts)) or f"export-{job_id}"
    stem = stem[: MAX_NAME_CHARS - len(ext) - 1]
    return stem if stem.lower().endswith("." + ext) else f"{stem}.{ext}"


def row_download_filename(row: dict[str, Any]) -> str:
    """The download name of a job row (``payload``, ``content_type``, ``id``)."""
    return download_filename(row.get("payload"), row.get("content_type"), str(row["id"]))


def ascii_fallback(name: str) -> str:
    """The name in printable ASCII for ``filename=``: accents dropped, other letters replaced by ``_``."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    plain = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    plain = re.sub(r"[-_]{2,}", "-", _NOT_ASCII_SAFE.sub("_", plain)).strip(" ._-") or "download"
    return f"{plain}.{ext}" if ext else plain


def content_disposition(name: str, disposition: str = "attachment") -> str:
    """``attachment; filename="chez-bars-diner.pdf"; filename*=UTF-8''chez-bars-d%C3%AEner.pdf``."""
    encoded = urllib.parse.quote(name, safe="")
    return f"{disposition}; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{encoded}"


def with_download_name(url: str, name: str) -> str:
    """`url` with ``download=NAME``: Supabase Storage and the local /files both name the file after it."""
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode({"download": name})
