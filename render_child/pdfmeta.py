"""The PDF's document information: our title and name, nothing of the page's address.

Chromium writes ``/Title`` from the page's ``<title>`` (or the URL when there is none)
and ``/Creator`` as its HeadlessChrome user agent, and has no option to change
either. So the PDF is rewritten once with pypdf, which keeps the outline, the
structure tree (tagged PDF) and ``/Lang`` as they are.
"""

from __future__ import annotations

import io
import re

import pypdf
from pypdf.generic import NameObject

PRODUCER = "export-worker"
_URL_LIKE = re.compile(r"[a-z][a-z0-9+.-]*://|[?&][^=\s]+=|^about:|^data:|^www\.", re.IGNORECASE)


def safe_title(candidate: str | None, fallback: str) -> str:
    """``candidate`` unless it is empty or carries an address (a URL, a query string)."""
    text = " ".join((candidate or "").split())
    if not text or _URL_LIKE.search(text):
        return fallback
    return text[:300]


def set_document_info(data: bytes, title: str) -> tuple[bytes, int]:
    """The PDF with /Title, /Creator and /Producer ours and every other info entry gone; and its page count."""
    reader = pypdf.PdfReader(io.BytesIO(data))
    writer = pypdf.PdfWriter(clone_from=reader)
    writer.metadata = {"/Title": title, "/Creator": PRODUCER, "/Producer": PRODUCER}  # clears the rest
    # an XMP packet would repeat the old title and tool; Chromium writes none today
    writer.root_object.pop(NameObject("/Metadata"), None)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue(), len(writer.pages)
