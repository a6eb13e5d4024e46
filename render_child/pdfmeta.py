"""The PDF's document information: our title and name, nothing of the page's address.

Chromium writes ``/Title`` from the page's ``<title>`` (``about:blank`` or the URL when
there is none) and ``/Creator`` as its HeadlessChrome user agent, and has no option to
change either. Skia writes that Info dictionary as plain text (object 1), so it is
overwritten in place with one of the same length, padded with spaces: no offset moves,
the cross-reference table stays valid, and it costs microseconds. When our title does
not fit (a long title in UTF-16), the old dictionary is blanked in place and the new one
appended as an incremental update (the same object number, an xref section for it and a
trailer with ``/Prev``; ISO 32000-1 7.5.6), still microseconds and still nothing of the
old title in the file. Only a file written otherwise (no flat Info dictionary, no
classic trailer) goes through pypdf, which rewrites the whole file (18-320 ms for 50-340
KB menus, measured) and keeps the outline, the structure tree and ``/Lang``.

Chromium's own ``/Title`` is read back here (:func:`chromium_title`), so a page's title
costs no round trip to the page.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

PRODUCER = "export-worker"
_URL_LIKE = re.compile(r"[a-z][a-z0-9+.-]*://|^(about|data|blob|file|javascript):|[?&][^=\s]+=|^www\.", re.IGNORECASE)
_INFO_REF = re.compile(rb"/Info\s+(\d+)\s+(\d+)\s+R")
_TITLE_VALUE = re.compile(rb"/Title\s*(\(|<([0-9A-Fa-f\s]*)>)")
_STARTXREF = re.compile(rb"startxref\s+(\d+)")
_OCTAL = re.compile(rb"[0-7]{1,3}")


def safe_title(candidate: str | None, fallback: str) -> str:
    """``candidate`` unless it is empty or carries an address (a URL, a query string)."""
    text = " ".join((candidate or "").split())
    if not text or _URL_LIKE.search(text):
        return fallback
    return text[:300]


def set_document_info(data: bytes, title: str) -> bytes:
    """The PDF with /Title, /Creator and /Producer ours and every other info entry gone."""
    info = _info_object(data)
    if info is not None:
        rewritten = _in_place(data, info, title)
        if rewritten is None:
            rewritten = _incremental(data, info, title)
        if rewritten is not None:
            return rewritten
    return _with_pypdf(data, title)


def chromium_title(data: bytes) -> str | None:
    """The /Title Chromium wrote (the page's title, or its address when it has none), if the
    Info dictionary is the flat one Skia writes."""
    info = _info_object(data)
    if info is None:
        return None
    m = _TITLE_VALUE.search(data, info.start, info.end)
    if m is None:
        return None
    raw = _hex_string(m.group(2)) if m.group(2) is not None else _literal_string(data, m.end(1), info.end)
    if raw is None:
        return None
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", errors="replace")
    return raw.decode("latin-1")  # PDFDocEncoding, near enough for a title that safe_title screens


def pdf_text_string(text: str) -> bytes:
    """A PDF text string: a literal when plain ASCII, else UTF-16BE hex with its byte order mark."""
    if text.isascii() and text.isprintable():
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        return f"({escaped})".encode("ascii")
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode("ascii") + b">"


def info_dictionary(title: str) -> bytes:
    producer = pdf_text_string(PRODUCER)
    return b"<</Title " + pdf_text_string(title) + b"\n/Creator " + producer + b"\n/Producer " + producer + b">>"


@dataclass(frozen=True)
class _Info:
    """The Info dictionary's object: its number and generation, and its dictionary's bytes
    (``start`` to ``end``: the dictionary, then the padding and line break before ``endobj``)."""

    number: int
    generation: int
    start: int
    end: int


def _info_object(data: bytes) -> _Info | None:
    """The Info object of the last trailer, when it is the flat dictionary Skia writes."""
    trailer = data.rfind(b"trailer")
    ref = _INFO_REF.search(data, trailer) if trailer >= 0 else None
    if ref is None:
        return None
    number, generation = int(ref.group(1)), int(ref.group(2))
    start = _last_object(data, b"%d %d obj" % (number, generation))
    if start < 0:
        return None
    end = data.find(b"endobj", start)
    if end < 0 or not data.startswith(b"<<", start):
        return None
    region = data[start:end]
    old = region.rstrip()
    if old.count(b"<<") != 1 or not old.endswith(b">>") or len(old) == len(region):
        return None  # not the flat dictionary Skia writes
    return _Info(number, generation, start, end)


def _last_object(data: bytes, head: bytes) -> int:
    """Where the last definition of an object starts (after ``N G obj`` and white space), or -1:
    after an incremental update, the latest revision of the object is the one that counts."""
    at = len(data)
    while (at := data.rfind(head, 0, at)) >= 0:
        if at == 0 or data[at - 1] in b"\r\n":
            end = at + len(head)
            return end + len(data[end:end + 16]) - len(data[end:end + 16].lstrip())
    return -1


def _in_place(data: bytes, info: _Info, title: str) -> bytes | None:
    """The new dictionary over the old one, padded to its length; None when it does not fit."""
    new = info_dictionary(title)
    room = info.end - info.start - 1  # the padding may take all but the last byte, which stays a line break
    if len(new) > room:
        return None
    return data[: info.start] + new + b" " * (room - len(new)) + b"\n" + data[info.end :]


def _incremental(data: bytes, info: _Info, title: str) -> bytes | None:
    """The old dictionary blanked in place (``<<>>``), the new one appended as an incremental
    update of the same object; None unless the file ends in a classic trailer without /Prev."""
    trailer = data.rfind(b"trailer")
    startxref = data.rfind(b"startxref")
    prev = _STARTXREF.match(data, startxref) if startxref > trailer else None
    dictionary = data[trailer + len(b"trailer") : startxref].strip()
    if prev is None or not dictionary.endswith(b">>") or b"/Prev" in dictionary:
        return None
    blank = b"<<>>" + b" " * (info.end - info.start - 5) + b"\n"
    body = data[: info.start] + blank + data[info.end :]
    if not body.endswith(b"\n"):
        body += b"\n"
    ref = b"%d %d" % (info.number, info.generation)
    obj = ref + b" obj\n" + info_dictionary(title) + b"\nendobj\n"
    # the free list's head first, as the standard's examples of an update have it (pypdf warns without)
    xref = b"xref\n0 1\n0000000000 65535 f \n%d 1\n%010d %05d n \n" % (info.number, len(body), info.generation)
    new_trailer = dictionary[:-2] + b"\n/Prev " + prev.group(1) + b">>"
    tail = b"trailer\n" + new_trailer + b"\nstartxref\n%d\n%%%%EOF\n" % (len(body) + len(obj))
    return body + obj + xref + tail


def _hex_string(text: bytes) -> bytes | None:
    digits = re.sub(rb"\s", b"", text)
    try:
        return bytes.fromhex((digits + b"0" * (len(digits) % 2)).decode("ascii"))
    except ValueError:
        return None


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}


def _literal_string(data: bytes, start: int, end: int) -> bytes | None:
    """A literal string's bytes from just after its ``(`` (balanced parentheses, escapes)."""
    out = bytearray()
    depth, i = 1, start
    while i < end:
        c = data[i]
        i += 1
        if c == 0x5C:  # backslash
            octal = _OCTAL.match(data, i)
            if octal:
                out.append(int(octal.group(), 8) & 0xFF)
                i = octal.end()
            elif i < end and data[i] in b"\r\n":  # a line continuation
                i += 2 if data[i : i + 2] == b"\r\n" else 1
            elif i < end:
                out += _ESCAPES.get(data[i], data[i : i + 1])
                i += 1
            continue
        depth += (c == 0x28) - (c == 0x29)
        if depth == 0:
            return bytes(out)
        out.append(c)
    return None


def _with_pypdf(data: bytes, title: str) -> bytes:
    import pypdf  # only here: the in-place path is the usual one, and pypdf takes ~100 ms to import
    from pypdf.generic import NameObject

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.metadata = {"/Title": title, "/Creator": PRODUCER, "/Producer": PRODUCER}  # clears the rest
    # an XMP packet would repeat the old title and tool; Chromium writes none today
    writer.root_object.pop(NameObject("/Metadata"), None)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
