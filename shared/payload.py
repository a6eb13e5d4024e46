"""The render request stored in ``export_jobs.payload``: what to render and how.

These structs are the single schema for the creation function's callers (CLI, HTTP
API, Python API), the supervisor and the render child. ``parse_payload`` turns any
JSON-ish input into a validated :class:`RenderPayload` or raises
:class:`PayloadError` naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from shared.field_words import owner_message
from shared.hosts import host_matches, host_problem  # the child's matcher too: one rule, both sides
from shared.menu import MenuDocument


class PayloadError(ValueError):
    """The request is malformed; ``field`` is a dotted path such as ``pdf.scale``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class HtmlSource(_Strict, tag="html", tag_field="kind"):
    html: Annotated[str, msgspec.Meta(min_length=1)]
    # Only built-in, trusted templates may turn JavaScript on; user HTML never does.


class MenuSource(_Strict, tag="menu", tag_field="kind"):
    menu: MenuDocument
    template: Literal["classic", "modern"] = "classic"


class UrlSource(_Strict, tag="url", tag_field="kind"):
    url: Annotated[str, msgspec.Meta(min_length=8, max_length=4096)]


class TestTemplateSource(_Strict, tag="test-template", tag_field="kind"):
    """Built-in pages that exist to exercise failure paths (busy loop, memory hog).

    Refused unless the worker runs with ``allow_test_templates`` (tests only).
    """

    name: Literal["busy-loop", "eat-memory", "crash-renderer"]


Source = HtmlSource | MenuSource | UrlSource | TestTemplateSource

PageSize = Literal["A3", "A4", "A5", "Letter", "Legal", "Tabloid"]
Length = Annotated[str, msgspec.Meta(pattern=r"^\d+(\.\d+)?(mm|cm|in|px)$")]


class Margins(_Strict):
    top: Length = "10mm"
    right: Length = "10mm"
    bottom: Length = "10mm"
    left: Length = "10mm"


class PdfOptions(_Strict):
    page_size: PageSize = "A4"
    landscape: bool = False
    margins: Margins = msgspec.field(default_factory=Margins)
    print_background: bool = True
    scale: Annotated[float, msgspec.Meta(ge=0.1, le=2.0)] = 1.0


class ImageOptions(_Strict):
    format: Literal["png", "jpeg", "webp"] = "png"
    width: Annotated[int, msgspec.Meta(ge=16, le=10_000)] = 1240
    height: Annotated[int, msgspec.Meta(ge=16, le=20_000)] | None = None
    full_page: bool = True
    device_scale_factor: Annotated[float, msgspec.Meta(ge=0.5, le=4.0)] = 1.0
    quality: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None


class RenderPayload(_Strict):
    source: Source
    pdf: PdfOptions = msgspec.field(default_factory=PdfOptions)
    image: ImageOptions = msgspec.field(default_factory=ImageOptions)
    email: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)] | None = None
    filename: Annotated[str, msgspec.Meta(pattern=r"^[\w.\- ]{1,100}$")] | None = None


_encoder = msgspec.json.Encoder()


def parse_payload(
    data: Any,
    export_type: str,
    *,
    max_input_bytes: int | None = None,
    allowed_url_hosts: Sequence[str] | None = None,
) -> RenderPayload:
    """Validate a payload (dict or JSON bytes) for the given export type."""
    if export_type not in ("pdf", "image"):
        raise PayloadError("export_type", f"must be 'pdf' or 'image', got {export_type!r}")
    try:
        if isinstance(data, bytes | str):
            payload = msgspec.json.decode(data, type=RenderPayload)
        else:
            payload = msgspec.convert(data, RenderPayload)
    except msgspec.ValidationError as exc:
        raise payload_error(exc, data) from None
    except msgspec.DecodeError as exc:
        raise PayloadError("", f"payload is not valid JSON: {exc}") from None
    check_payload(payload, export_type, max_input_bytes=max_input_bytes, allowed_url_hosts=allowed_url_hosts)
    return payload


def check_payload(
    payload: RenderPayload,
    export_type: str,
    *,
    max_input_bytes: int | None = None,
    allowed_url_hosts: Sequence[str] | None = None,
) -> None:
    """The rules a schema cannot say: options that depend on the export type, the input size,
    and (when `allowed_url_hosts` is given) whether a `url` source may be rendered at all."""
    image = payload.image
    if export_type == "image":
        if image.quality is not None and image.format == "png":
            raise PayloadError("image.quality", "only jpeg and webp take a quality; png is lossless")
        if not image.full_page and image.height is None:
            raise PayloadError("image.height", "required when image.full_page is false")
    if max_input_bytes is not None:
        size = len(_encoder.encode(payload.source))
        if size > max_input_bytes:
            raise PayloadError(
                "source", f"The document is {size:,} bytes, more than the {max_input_bytes:,} allowed "
                "(MAX_INPUT_BYTES). Shorten it or remove large images."
            )
    if allowed_url_hosts is not None and isinstance(payload.source, UrlSource):
        problem = url_source_problem(payload.source.url, allowed_url_hosts)
        if problem is not None:
            raise PayloadError("source.url", problem)


def url_source_problem(url: str, allowed_url_hosts: Sequence[str]) -> str | None:
    """Why `url` may not be rendered (the render child's own rules), or None when it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"only http and https URLs can be rendered, not {scheme or 'a URL without a scheme'}"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    bad_host = host_problem(host)
    if bad_host is not None:
        return bad_host
    if not host_matches(host, port or (443 if scheme == "https" else 80), list(allowed_url_hosts)):
        if not allowed_url_hosts:
            return "url sources are off on this worker (ALLOWED_URL_HOSTS is empty)"
        return f"host {host} is not in ALLOWED_URL_HOSTS"
    return None


# NUL cannot be stored by PostgreSQL; an unpaired surrogate cannot be encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_string(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first string (key or value) in `value` holding NUL or an unpaired surrogate:
    (its dotted path, what is wrong), or None."""
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        if found is None:
            return None
        what = "a NUL character (\\u0000)" if found.group() == "\x00" else "an unpaired surrogate"
        return path, f"contains {what} at position {found.start()}, which cannot be stored"
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            hit = unstorable_string(key, inner) or unstorable_string(item, inner)
            if hit is not None:
                return hit
    elif isinstance(value, list):
        for index, item in enumerate(value):
            hit = unstorable_string(item, f"{path}.{index}" if path else str(index))
            if hit is not None:
                return hit
    return None


_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
# A rule of our own in a __post_init__ names its field first: "`locale`: ..." (shared/menu.py).
_OWN_FIELD = re.compile(r"^`(\w+)`: (.*)$", re.DOTALL)


def payload_error(exc: msgspec.ValidationError, data: Any = None, root: Any = RenderPayload) -> PayloadError:
    """msgspec's error as a PayloadError: ``field`` the dotted path (for programs), ``message``
    in the owner's words (shared/field_words.py), naming the dish or section from `data`."""
    text = str(exc)
    path: list[str | int] = []
    if " - at `$" in text:
        text, _, where = text.rpartition(" - at `$")
        path = [name if name else int(index) for name, index in _PATH_PART.findall(where.rstrip("`"))]
    if text.startswith(("Object missing required field", "Object contains unknown field")) and "`" in text:
        path.append(text.split("`")[1])
    own = _OWN_FIELD.match(text)
    if own is not None:
        path.append(own.group(1))
        text = own.group(2)
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            data = None
    field = ".".join(str(part) for part in path)
    return PayloadError(field, owner_message(text, path, data, root))


def payload_to_builtins(payload: RenderPayload) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(payload)
    return result
