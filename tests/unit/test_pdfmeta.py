"""The PDF's document information without Chromium: reading Chromium's /Title back, and the
rewrite (in place, or an incremental update) on a minimal PDF laid out like Skia's."""

from __future__ import annotations

import io

import pypdf
import pytest

from render_child.pdfmeta import chromium_title, info_dictionary, pdf_text_string, set_document_info


def skia_like(info: bytes) -> bytes:
    """A one-page PDF whose object 1 is the flat Info dictionary `info`, with a classic xref."""
    objects = [
        info,
        b"<</Type /Catalog /Pages 3 0 R>>",
        b"<</Type /Pages /Kids [4 0 R] /Count 1>>",
        b"<</Type /Page /Parent 3 0 R /MediaBox [0 0 200 200]>>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<</Size %d\n/Root 2 0 R\n/Info 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# As Chromium 156 writes it
CHROMIUM_INFO = (b"<</Title %s\n/Creator (Mozilla/5.0 \\(X11; Linux x86_64\\) AppleWebKit/537.36 "
                 b"\\(KHTML, like Gecko\\) HeadlessChrome/156.0.0.0 Safari/537.36)\n/Producer (Skia/PDF m156)\n"
                 b"/CreationDate (D:20261207095946+00'00')\n/ModDate (D:20261207095946+00'00')>>")


@pytest.mark.parametrize(
    ("written", "title"),
    [(b"(Light \\(menu\\) \\\\ x)", "Light (menu) \\ x"),
     (b"<FEFF05E905DC05D505DD002000430061006600E9>", "שלום Café"),
     (b"(about:blank)", "about:blank"),
     (b"(tab\\there \\101\\102 and\\\ncontinued)", "tab\there AB andcontinued"),
     (b"(nested (parens) kept)", "nested (parens) kept")],
)
def test_chromium_title_reads_skias_strings(written: bytes, title: str) -> None:
    assert chromium_title(skia_like(CHROMIUM_INFO % written)) == title


def test_chromium_title_of_a_file_without_a_flat_info_dictionary_is_none() -> None:
    assert chromium_title(b"%PDF-1.7\nno trailer here") is None
    assert chromium_title(skia_like(b"<</Title (x) /Nested <</A 1>>>>")) is None


@pytest.mark.parametrize("title", ["Spring menu", "Bistro Lumière — Menu du soir", "a (b) \\ c", "مطعم"])
def test_rewrite_in_place_round_trips(title: str) -> None:
    data = skia_like(CHROMIUM_INFO % b"(Menu)")
    out = set_document_info(data, title)
    assert len(out) == len(data)  # in place: not one offset moved
    assert chromium_title(out) == title
    reader = pypdf.PdfReader(io.BytesIO(out), strict=True)
    assert dict(reader.metadata or {}) == {"/Title": title, "/Creator": "export-worker", "/Producer": "export-worker"}


def test_a_title_that_does_not_fit_is_an_incremental_update_without_the_old_one() -> None:
    data = skia_like(b"<</Title (https://menus.example/m/42?token=s3cret)>>")
    title = "é" * 200  # 200 UTF-16 characters: far more than the old dictionary's room
    out = set_document_info(data, title)
    assert out.startswith(data[: data.index(b"1 0 obj")])  # nothing before the Info object moved
    assert len(out) > len(data) and out.count(b"%%EOF") == 2 and b"/Prev" in out
    assert b"s3cret" not in out and b"menus.example" not in out  # the old dictionary is blanked
    reader = pypdf.PdfReader(io.BytesIO(out), strict=True)
    assert dict(reader.metadata or {}) == {"/Title": title, "/Creator": "export-worker", "/Producer": "export-worker"}
    assert len(reader.pages) == 1
    assert chromium_title(out) == title  # read from the update, the latest revision


def test_info_dictionary_strings() -> None:
    assert pdf_text_string("a(b)\\") == b"(a\\(b\\)\\\\)"
    assert pdf_text_string("é") == b"<FEFF00E9>"
    assert info_dictionary("T") == b"<</Title (T)\n/Creator (export-worker)\n/Producer (export-worker)>>"
