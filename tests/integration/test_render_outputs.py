"""PDF and image outputs of a real render child: formats, sizes, limits, menus."""

from __future__ import annotations

import io
import shutil
import subprocess
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pypdf
import pytest
from PIL import Image
from render_helpers import ChildHandle, make_job, requires_chromium, running_child

from render_child.canary import canary_job
from render_child.output import count_pdf_pages
from render_child.pdfmeta import safe_title, set_document_info
from shared.menu import MenuDocument, MenuItem, MenuSection, Restaurant
from shared.messages import Rendered, RenderFailed, RenderLimits
from shared.payload import ImageOptions, Margins, MenuSource, PdfOptions

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
TALL = (
    "<body style='margin:0'><div style='height:3000px;background:linear-gradient(red,blue)'>tall</div></body>"
)


@pytest.fixture(scope="module")
def child() -> Iterator[ChildHandle]:
    with running_child() as handle:
        yield handle


def _pdfinfo(data: bytes, tmp: Path) -> dict[str, str] | None:
    """What poppler's pdfinfo reads from the file (Title, Creator, Producer, Tagged...), when
    pdfinfo is installed: a second, independent reader of the metadata."""
    if shutil.which("pdfinfo") is None:
        return None
    path = tmp / "info.pdf"
    path.write_bytes(data)
    out = subprocess.run(["pdfinfo", "-enc", "UTF-8", str(path)], capture_output=True, check=True, timeout=60)
    fields = (line.partition(":") for line in out.stdout.decode("utf-8").splitlines())
    return {key: value.strip() for key, _, value in fields}


def _pdf(answer: Rendered | RenderFailed) -> pypdf.PdfReader:
    assert isinstance(answer, Rendered), answer
    assert answer.content_type == "application/pdf"
    with open(answer.output_path, "rb") as fh:
        data = fh.read()
    assert len(data) == answer.size_bytes
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert answer.pages == len(reader.pages) == count_pdf_pages(data)
    return reader


def test_canary(child: ChildHandle) -> None:
    job = canary_job(f"{child.scratch}/canary/canary.pdf")
    reader = _pdf(child.render(job))
    assert len(reader.pages) == 1
    assert "canary" in reader.pages[0].extract_text()


def test_a4_portrait(child: ChildHandle) -> None:
    reader = _pdf(child.render(make_job("<h1>A4</h1>", child.scratch)))
    box = reader.pages[0].mediabox
    # A4 is 595x842 pt; Chromium rounds it to 8.27x11.7 in (595.9x842.4)
    assert float(box.width) == pytest.approx(595, abs=1.5)
    assert float(box.height) == pytest.approx(842, abs=1.5)


def test_letter_landscape_multi_page(child: ChildHandle) -> None:
    html = "".join(f"<p style='break-after:page'>page {i}</p>" for i in range(3))
    pdf = PdfOptions(page_size="Letter", landscape=True, margins=Margins(top="1in", bottom="1in"), scale=0.8)
    reader = _pdf(child.render(make_job(html, child.scratch, pdf=pdf)))
    assert len(reader.pages) == 3
    box = reader.pages[0].mediabox
    assert float(box.width) == pytest.approx(792, abs=1.5)
    assert float(box.height) == pytest.approx(612, abs=1.5)


def test_page_limit(child: ChildHandle) -> None:
    html = "".join(f"<p style='break-after:page'>page {i}</p>" for i in range(4))
    answer = child.render(make_job(html, child.scratch, limits=RenderLimits(max_pages=3)))
    assert isinstance(answer, RenderFailed)
    assert answer.category == "validation"
    assert answer.message == "PDF has more than 3 pages, the limit (MAX_PAGES)"


@pytest.mark.timeout(240)
def test_ten_thousand_forced_page_breaks_fail_at_print_time(child: ChildHandle) -> None:
    """Hostile corpus: 120 KB of forced page breaks. Only pages 1..MAX_PAGES+1 are printed
    (pageRanges), so the pages error comes while printing, not after a 10,000-page PDF
    (which held a Chromium past the job timeout, twice)."""
    html = "<style>p { break-after: page }</style>" + "<p>page</p>" * 10_000
    assert 100_000 < len(html) < 130_000
    limits = RenderLimits(max_pages=100, navigation_timeout_ms=60_000)
    answer = child.render(make_job(html, child.scratch, limits=limits), timeout=120)
    assert isinstance(answer, RenderFailed), answer
    assert answer.category == "validation"
    assert answer.message == "PDF has more than 100 pages, the limit (MAX_PAGES)"
    # exactly the limit still prints, every page of it
    at_limit = "<style>p { break-after: page }</style>" + "<p>page</p>" * 99 + "<p>last</p>"
    reader = _pdf(child.render(make_job(at_limit, child.scratch, limits=limits)))
    assert len(reader.pages) == 100


def test_output_size_limit(child: ChildHandle) -> None:
    answer = child.render(make_job("<h1>big</h1>", child.scratch, limits=RenderLimits(max_output_bytes=100)))
    assert isinstance(answer, RenderFailed)
    assert answer.category == "validation"
    assert "MAX_OUTPUT_BYTES" in answer.message


def _image(answer: Rendered | RenderFailed, fmt: str) -> Image.Image:
    assert isinstance(answer, Rendered), answer
    assert answer.content_type == f"image/{fmt}"
    img = Image.open(answer.output_path)
    assert img.format == fmt.upper()
    assert (img.width, img.height) == (answer.width, answer.height)
    return img


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_image_formats_with_explicit_height(child: ChildHandle, fmt: str) -> None:
    opts = ImageOptions(
        format=fmt, width=400, height=300, full_page=False, quality=None if fmt == "png" else 70
    )
    img = _image(child.render(make_job(TALL, child.scratch, export_type="image", image=opts)), fmt)
    assert img.size == (400, 300)


def test_device_scale_factor_doubles_pixels(child: ChildHandle) -> None:
    opts = ImageOptions(width=400, height=300, full_page=False, device_scale_factor=2)
    img = _image(child.render(make_job(TALL, child.scratch, export_type="image", image=opts)), "png")
    assert img.size == (800, 600)
    # and the next job is back at scale 1
    opts = ImageOptions(width=400, height=300, full_page=False)
    img = _image(child.render(make_job(TALL, child.scratch, export_type="image", image=opts)), "png")
    assert img.size == (400, 300)


def test_full_page_measures_the_document(child: ChildHandle) -> None:
    opts = ImageOptions(format="jpeg", width=500, full_page=True)
    img = _image(child.render(make_job(TALL, child.scratch, export_type="image", image=opts)), "jpeg")
    assert img.width == 500
    assert img.height >= 3000
    top = img.getpixel((10, 5))
    bottom = img.getpixel((10, 2990))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and bottom[2] > 200  # red at the top, blue at the bottom: really captured


def test_pixel_limit_is_checked_before_capture(child: ChildHandle) -> None:
    opts = ImageOptions(width=1000, full_page=True, device_scale_factor=2)
    limits = RenderLimits(max_image_pixels=5_000_000)
    answer = child.render(make_job(TALL, child.scratch, export_type="image", image=opts, limits=limits))
    assert isinstance(answer, RenderFailed)
    assert answer.category == "validation"
    assert "MAX_IMAGE_PIXELS" in answer.message


def long_menu() -> MenuDocument:
    sections = []
    for s in range(6):
        items = [
            MenuItem(
                name=f"Dish {s}-{i}",
                description=f"Item {s}-{i}: slow-cooked with seasonal vegetables, herbs from the garden, "
                "a little butter and a lot of patience. " * 2,
                price=f"{10 + i}.50",
                currency=("USD", "EUR", "GBP")[i % 3],
                dietary=["vegetarian", "gluten-free"] if i % 2 else [],
            )
            for i in range(10)
        ]
        sections.append(MenuSection(title=f"Section {s}", description="Served all day", items=items))
    return MenuDocument(
        restaurant=Restaurant(name="Long Menu Diner", tagline="Sixty dishes"), sections=sections
    )


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_long_menu_breaks_between_items(child: ChildHandle, template: str) -> None:
    menu = long_menu()
    job = make_job(MenuSource(menu=menu, template=template), child.scratch)  # type: ignore[arg-type]
    reader = _pdf(child.render(job))
    assert len(reader.pages) > 1
    texts = [" ".join(page.extract_text().split()) for page in reader.pages]
    for section in menu.sections:
        for item in section.items:
            name = item.name
            tag = name.replace("Dish ", "Item ") + ":"
            pages_with_name = [n for n, text in enumerate(texts) if name in text]
            pages_with_desc = [n for n, text in enumerate(texts) if tag in text]
            assert len(pages_with_name) == 1, name
            assert pages_with_name == pages_with_desc, f"{name} is split across pages"


def _sample(name: str) -> MenuDocument:
    return msgspec.json.decode((SAMPLES / f"{name}.json").read_bytes(), type=MenuDocument)


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_menu_pdf_metadata_outline_and_tags(child: ChildHandle, template: str, tmp_path: Path) -> None:
    menu = _sample("bistro")
    answer = child.render(make_job(MenuSource(menu=menu, template=template), child.scratch))
    reader = _pdf(answer)
    meta = reader.metadata
    assert meta is not None
    assert meta.title == "Bistro Lumière \u2014 Menu du soir"
    assert meta.creator == "export-worker" and meta.producer == "export-worker"
    assert set(meta) <= {"/Title", "/Creator", "/Producer"}
    root = reader.trailer["/Root"]
    assert bool(root["/MarkInfo"]["/Marked"])  # tagged
    assert "/StructTreeRoot" in root
    assert root["/Lang"] == "fr-CA"
    assert "/Metadata" not in root  # no XMP packet repeating anything
    # the restaurant (h1) holds the sections (h2) as bookmarks
    outline = reader.outline
    assert [getattr(o, "title", None) for o in outline if not isinstance(o, list)] == ["Bistro Lumière"]
    children = next(o for o in outline if isinstance(o, list))
    # as printed: classic's headings are upper-cased by CSS
    assert [o.title.casefold() for o in children] == [s.title.casefold() for s in menu.sections]
    with open(answer.output_path, "rb") as fh:  # type: ignore[union-attr]
        raw = fh.read()
    assert b"HeadlessChrome" not in raw and b"Skia/PDF" not in raw
    info = _pdfinfo(raw, tmp_path)
    if info is not None:
        assert info["Title"] == "Bistro Lumière \u2014 Menu du soir"
        assert info["Creator"] == info["Producer"] == "export-worker"
        assert info["Tagged"] == "yes"


@pytest.mark.parametrize(
    "head",
    ["<title>https://menus.example/m/42?token=s3cret&lang=de</title>", "<title>index?token=s3cret</title>", ""],
)
def test_pdf_metadata_never_carries_an_address(child: ChildHandle, head: str) -> None:
    job = make_job(f"<!doctype html><html><head>{head}</head><body><h1>Hi</h1></body></html>", child.scratch)
    answer = child.render(job)
    reader = _pdf(answer)
    assert reader.metadata is not None and reader.metadata.title == "Export"
    with open(answer.output_path, "rb") as fh:  # type: ignore[union-attr]
        raw = fh.read()
    assert b"s3cret" not in raw and b"about:blank" not in raw and b"menus.example" not in raw


@pytest.mark.parametrize(
    ("page_title", "title"),
    [("Spring  specials", "Spring specials"),
     ("Caf\u00e9 (d\u00e9jeuner) \\ soir", "Caf\u00e9 (d\u00e9jeuner) \\ soir"),
     ("\u05de\u05e1\u05e2\u05d3\u05d4 &amp; bar", "\u05de\u05e1\u05e2\u05d3\u05d4 & bar")],
)
def test_pdf_title_from_a_plain_page_title(child: ChildHandle, page_title: str, title: str) -> None:
    """The page's title as Chromium printed it, read back from the PDF."""
    job = make_job(f"<!doctype html><title>{page_title}</title><h1>Hi</h1>", child.scratch)
    reader = _pdf(child.render(job))
    assert reader.metadata is not None and reader.metadata.title == title


def _white_margins(img: Image.Image) -> tuple[int, int, int, int]:
    """White pixels between the content and the left, top, right and bottom edges."""
    gray = img.convert("L")
    box = Image.eval(gray, lambda v: 255 if v < 245 else 0).getbbox()
    assert box is not None, "the image is blank"
    left, top, right, bottom = box
    return left, top, img.width - right, img.height - bottom


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_menu_image_has_margins_and_fits_its_content(child: ChildHandle, template: str) -> None:
    menu = _sample("noodle_bar")
    opts = ImageOptions(format="jpeg", width=900, quality=90)
    job = make_job(MenuSource(menu=menu, template=template), child.scratch, export_type="image", image=opts)
    img = _image(child.render(job), "jpeg")
    left, top, right, bottom = _white_margins(img)
    assert 20 <= left <= 80 and 20 <= right <= 80, (left, right)
    assert 20 <= top <= 80, top
    assert 15 <= bottom <= 60, bottom  # a margin, not a band of white


def test_full_page_image_is_as_tall_as_its_content(child: ChildHandle) -> None:
    """Not at least the 800 px viewport: a short page gives a short image."""
    page = "<body style='margin:0'><div style='height:120px;background:#123'></div></body>"
    opts = ImageOptions(width=300, full_page=True)
    img = _image(child.render(make_job(page, child.scratch, export_type="image", image=opts)), "png")
    assert img.size == (300, 120)


@pytest.mark.parametrize(
    "title", ["Spring menu", "Bistro Lumière \u2014 Menu du soir", "a (b) \\ c", "مطعم الياسمين", "x" * 250]
)
def test_document_info_rewrite_keeps_the_file_valid(child: ChildHandle, title: str, tmp_path: Path) -> None:
    """In place when the title fits Chromium's Info dictionary, as an incremental update when
    it does not; read back by pypdf (strict) and by pdfinfo."""
    raw = child.render(make_job("<!doctype html><title>t</title><h1>Hi</h1><h2>Sub</h2>", child.scratch))
    assert isinstance(raw, Rendered)
    with open(raw.output_path, "rb") as fh:
        data = fh.read()
    # the render child already rewrote it once; a second rewrite must work the same
    out = set_document_info(data, title)
    reader = pypdf.PdfReader(io.BytesIO(out), strict=True)  # strict: every xref offset must be right
    assert reader.metadata is not None
    assert dict(reader.metadata) == {"/Title": title, "/Creator": "export-worker", "/Producer": "export-worker"}
    assert len(reader.pages) == count_pdf_pages(out) == 1
    assert len(reader.outline) == 2
    # Whether a title fits in place depends on the room Chromium's own Info dictionary left
    # (its Creator string differs between the full browser and the headless shell); a short
    # ASCII title always fits and 250 characters never do.
    if title == "Spring menu":
        assert len(out) == len(data)
    if len(title) > 200:
        assert len(out) > len(data)
    if len(out) == len(data):
        assert out.count(b"%%EOF") == 1  # in place: not one offset moved
    else:
        # an update appended, not a rewrite: the file as it was, Info blanked, then one more revision
        assert len(out) > len(data) and out.count(b"%%EOF") == 2 and b"/Prev" in out
        assert out[len(data):].startswith(b"1 0 obj")
    info = _pdfinfo(out, tmp_path)
    if info is not None:
        assert (info["Title"], info["Creator"], info["Producer"]) == (title, "export-worker", "export-worker")
        assert info["Tagged"] == "yes" and info["Pages"] == "1"


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [("https://x.example/m?id=1", "Export"), ("about:blank", "Export"), ("menu?token=abc", "Export"),
     ("Lunch: specials", "Lunch: specials"), ("  Spring\n menu ", "Spring menu"), ("", "Export")],
)
def test_safe_title(candidate: str, expected: str) -> None:
    assert safe_title(candidate, "Export") == expected


def _x_of(reader: pypdf.PdfReader, needle: str) -> float:
    """Where on page 1 (points from the left) the first text containing ``needle`` starts."""
    found: list[float] = []

    def visit(text: str, cm: Any, tm: Any, _font: Any, _size: Any) -> None:
        # NFKC: Arabic comes out of the PDF as presentation forms (U+FExx)
        if needle in unicodedata.normalize("NFKC", text) and not found:
            found.append(tm[4] * cm[0] + cm[4])

    reader.pages[0].extract_text(visitor_text=visit)
    assert found, f"{needle!r} not on page 1"
    return found[0]


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_rtl_menu_is_mirrored(child: ChildHandle, template: str) -> None:
    """Arabic: the first dish's badges (in Arabic) on the right half, its price at the left margin;
    the French bistro the other way round."""
    rtl = _pdf(child.render(make_job(MenuSource(menu=_sample("jasmine_rtl"), template=template), child.scratch)))  # type: ignore[arg-type]
    width = float(rtl.pages[0].mediabox.width)
    assert _x_of(rtl, "\u063a\u0644\u0648\u062a\u064a\u0646") > width / 2  # غلوتين, of the gluten-free badge
    assert _x_of(rtl, "\u0662\u0668\u066b\u0660\u0660") < width / 4  # 28.00 in Arabic-Indic digits
    ltr = _pdf(child.render(make_job(MenuSource(menu=_sample("bistro"), template=template), child.scratch)))  # type: ignore[arg-type]
    assert _x_of(ltr, "Salade") < width / 4
    assert _x_of(ltr, "16,50") > width / 2
