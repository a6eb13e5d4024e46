"""Every major script prints with a real glyph from an embedded font (fonts-noto-*), never a box.

The multilingual sample (shared/samples/world_kitchen.json) is rendered to PDF in both
templates; then, with pypdf:
- every character of each script is drawn by an embedded font of the expected Noto family
  (the font names come from the PDF's font descriptors, the characters from ToUnicode);
- no text operator draws glyph 0 (.notdef, the empty box) in any font, CID or Type 3.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pypdf
import pytest
from pypdf.generic import ContentStream
from render_helpers import ChildHandle, make_job, requires_chromium, running_child

from shared.menu import MenuDocument
from shared.messages import Rendered
from shared.payload import MenuSource

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "samples" / "world_kitchen.json"

# script -> the embedded font family that must draw it (FontName without the subset prefix)
SCRIPT_FONTS = {
    "latin-diacritics": r"NotoSans(-|$)",
    "greek": r"NotoSans(-|$)",
    "cyrillic": r"NotoSans(-|$)",
    "arabic": r"NotoSansArabic|NotoNaskhArabic",
    "hebrew": r"NotoSansHebrew|NotoSerifHebrew",
    "devanagari": r"NotoSansDevanagari|NotoSerifDevanagari",
    "thai": r"NotoSansThai|NotoSerifThai",
    "chinese": r"NotoSansCJK|NotoSerifCJK",
    "japanese-kana": r"NotoSansCJK|NotoSerifCJK",
    "korean": r"NotoSansCJK|NotoSerifCJK",
    "emoji": r"NotoColorEmoji",
}


def script_of(ch: str) -> str | None:
    code = ord(ch)
    if code >= 0x1F000 or 0x2600 <= code < 0x2800:
        return "emoji"
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    if first == "LATIN" and code > 0x7F:
        return "latin-diacritics"
    if first in ("HIRAGANA", "KATAKANA"):
        return "japanese-kana"
    if first == "CJK" and "IDEOGRAPH" in name:
        return "chinese"
    if first == "HANGUL":
        return "korean"
    key = first.lower()
    return key if key in SCRIPT_FONTS else None


def font_name(font: Any) -> str:
    font = font.get_object()
    if font["/Subtype"] == "/Type0":
        font = font["/DescendantFonts"][0].get_object()
    name = str(font["/FontDescriptor"]["/FontName"]).lstrip("/")
    return name.split("+", 1)[-1]


def fonts_by_script(reader: pypdf.PdfReader) -> dict[str, dict[str, set[str]]]:
    """script -> character -> the fonts that drew it."""
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def visit(text: str, _cm: Any, _tm: Any, font: Any, _size: Any) -> None:
        if font is None:
            return
        for ch in text:
            script = script_of(ch)
            if script is not None:
                found[script][ch].add(font_name(font))

    for page in reader.pages:
        page.extract_text(visitor_text=visit)
    return found


def notdef_glyphs(reader: pypdf.PdfReader) -> list[str]:
    """Every text operator that draws glyph 0, as 'page N: font'."""
    bad: list[str] = []
    for number, page in enumerate(reader.pages, 1):
        fonts = page["/Resources"]["/Font"]
        stream = ContentStream(page.get_contents(), reader)
        current: Any = None
        for operands, operator in stream.operations:
            if operator == b"Tf":
                current = fonts[operands[0]].get_object()
                continue
            if operator not in (b"Tj", b"TJ", b"'", b'"') or current is None:
                continue
            strings = operands[0] if operator == b"TJ" else operands[-1:]
            for item in strings:
                if isinstance(item, int | float):
                    continue
                data = item.original_bytes if hasattr(item, "original_bytes") else bytes(item)
                if _draws_notdef(current, data):
                    bad.append(f"page {number}: {font_name(current)}")
    return bad


def _draws_notdef(font: Any, data: bytes) -> bool:
    if font["/Subtype"] == "/Type0":  # Identity-H: two-byte CIDs, CID = glyph id
        return any(data[i] == 0 and data[i + 1] == 0 for i in range(0, len(data) - 1, 2))
    if font["/Subtype"] == "/Type3":  # Skia names each glyph /g{hex id}; /g0 is .notdef
        names: dict[int, str] = {}
        code = 0
        for entry in font["/Encoding"]["/Differences"]:
            if isinstance(entry, int):
                code = entry
            else:
                names[code] = str(entry)
                code += 1
        return any(names.get(byte, "/g0") == "/g0" for byte in data)
    return False


@pytest.fixture(scope="module", autouse=True)
def noto_fonts_installed() -> None:
    families = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True, check=True).stdout
    missing = [f for f in ("Noto Sans", "Noto Sans CJK JP", "Noto Color Emoji") if f not in families]
    assert not missing, f"fonts {missing} are not installed: run scripts/install-chromium.sh"


@pytest.fixture(scope="module")
def child() -> Iterator[ChildHandle]:
    with running_child() as handle:
        yield handle


def _render(child: ChildHandle, menu: MenuDocument, template: str) -> pypdf.PdfReader:
    answer = child.render(make_job(MenuSource(menu=menu, template=template), child.scratch))  # type: ignore[arg-type]
    assert isinstance(answer, Rendered), answer
    return pypdf.PdfReader(answer.output_path)


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_every_script_has_real_glyphs(child: ChildHandle, template: str) -> None:
    menu = msgspec.json.decode(SAMPLE.read_bytes(), type=MenuDocument)
    reader = _render(child, menu, template)
    found = fonts_by_script(reader)
    assert sorted(found) == sorted(SCRIPT_FONTS), f"scripts printed: {sorted(found)}"
    for script, pattern in SCRIPT_FONTS.items():
        chars = found[script]
        assert len(chars) >= 3 or (script == "emoji" and len(chars) >= 2), (script, sorted(chars))
        for ch, fonts in chars.items():
            wrong = [f for f in fonts if not re.match(pattern, f)]
            assert not wrong, f"{script} {ch!r} (U+{ord(ch):04X}) drawn by {wrong}, expected {pattern}"
    assert notdef_glyphs(reader) == []


def test_the_check_sees_empty_boxes(child: ChildHandle) -> None:
    """A character no installed font has is drawn as glyph 0, and the check above reports it."""
    menu = msgspec.json.decode(SAMPLE.read_bytes(), type=MenuDocument)
    items = menu.sections[0].items
    items[0] = msgspec.structs.replace(items[0], name="Private use \ue000\ue001")
    reader = _render(child, menu, "classic")
    assert notdef_glyphs(reader), "glyph 0 was drawn but not found"
