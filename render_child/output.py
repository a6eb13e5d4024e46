"""The output step of a render: the loaded page printed to PDF (with its page limit) or
captured as an image (with its pixel limit)."""

from __future__ import annotations

import base64
import re
from typing import Any

from render_child.page import JobPage
from render_child.pdfmeta import chromium_title, safe_title, set_document_info
from shared.errors import ErrorCategory, JobError, RenderFailure
from shared.messages import RenderJob
from shared.payload import MenuSource

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_PAGES_COUNT = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)|/Count\s+(\d+)[^>]*?/Type\s*/Pages\b")


def count_pdf_pages(data: bytes) -> int:
    """Pages of a PDF written by Chromium (Skia writes plain, uncompressed page objects)."""
    pages = len(_PAGE_OBJECT.findall(data))
    if pages:
        return pages
    counts = [int(a or b) for a, b in _PAGES_COUNT.findall(data)]
    return max(counts, default=0)


async def render_pdf(slot: JobPage, job: RenderJob) -> tuple[bytes, dict[str, Any]]:
    opts = job.payload.pdf
    m = opts.margins
    limit = job.limits.max_pages
    # Print at most one page past the limit (Chromium's pageRanges): whether page
    # MAX_PAGES + 1 exists is all the check needs, and a document of 10,000 forced page
    # breaks is then refused in seconds instead of holding a Chromium for minutes.
    data = await slot.page.pdf(
        page_ranges=f"1-{limit + 1}",
        format=opts.page_size,
        landscape=opts.landscape,
        margin={"top": m.top, "right": m.right, "bottom": m.bottom, "left": m.left},
        print_background=opts.print_background,
        scale=opts.scale,
        outline=True,  # the headings (restaurant, sections) become bookmarks
        tagged=True,  # a structure tree for screen readers and reflow
    )
    data = set_document_info(data, _document_title(job, data))
    pages = count_pdf_pages(data)
    if pages > limit:
        raise JobError(ErrorCategory.VALIDATION, f"PDF has more than {limit} pages, the limit (MAX_PAGES)",
                       RenderFailure.PAGE_LIMIT)
    return data, {"pages": pages}


def _document_title(job: RenderJob, data: bytes) -> str:
    """The menu's title, or the page's as Chromium printed it (read from the PDF: no round
    trip to the page), unless it carries an address; else the file name or "Export"."""
    source = job.payload.source
    fallback = job.payload.filename or "Export"
    if isinstance(source, MenuSource):
        return safe_title(source.menu.title, fallback)
    return safe_title(chromium_title(data), fallback)


async def render_image(slot: JobPage, job: RenderJob) -> tuple[bytes, dict[str, Any]]:
    opts = job.payload.image
    width = opts.width
    # A full-page image without a height is measured in a 16 px viewport, so the content
    # size is the content's own height; in an 800 px one it would be at least 800 (a band
    # of white under a short menu).
    view_height = opts.height or 16
    dsf = opts.device_scale_factor
    cdp = await slot.cdp()
    await cdp.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": view_height, "deviceScaleFactor": dsf, "mobile": False},
    )
    if opts.full_page:
        metrics = await cdp.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        height = max(1, int(size["height"] + 0.999))
    else:
        height = view_height
    pixels = width * height * dsf * dsf
    if pixels > job.limits.max_image_pixels:
        raise JobError(
            ErrorCategory.VALIDATION,
            f"image would be {int(pixels)} pixels ({width}x{height} at scale {dsf}), more than the limit "
            f"of {job.limits.max_image_pixels} (MAX_IMAGE_PIXELS)",
            RenderFailure.PIXEL_LIMIT,
        )
    params: dict[str, Any] = {
        "format": opts.format,
        "captureBeyondViewport": opts.full_page,
        "fromSurface": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    }
    if opts.format != "png":
        params["quality"] = opts.quality if opts.quality is not None else 85
    result = await cdp.send("Page.captureScreenshot", params)
    data = base64.b64decode(result["data"])
    return data, {"width": round(width * dsf), "height": round(height * dsf)}
