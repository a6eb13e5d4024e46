"""What a reader gets from a printed menu: each field's text in logical order (right-to-left
menus with Latin fields), and page breaks where a print shop would put them.

The text is read back from the PDF by poppler's pdftotext, which orders each line's glyphs
logically by the Unicode bidi algorithm: a field printed in the wrong visual order reads
back wrong (".team" first, the emoji after the words, "560001 12").
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pypdf
import pytest
from render_helpers import ChildHandle, make_job, requires_chromium, running_child

from shared.menu import MenuDocument
from shared.messages import Rendered
from shared.payload import MenuSource

pytestmark = [pytest.mark.timeout(90), pytest.mark.chromium, requires_chromium]

TEST_MENUS = Path(__file__).resolve().parents[1] / "menus"
_BIDI_CONTROLS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def child() -> Iterator[ChildHandle]:
    with running_child() as handle:
        yield handle


def _menu(name: str) -> MenuDocument:
    return msgspec.json.decode((TEST_MENUS / f"{name}.json").read_bytes(), type=MenuDocument)


def _pages(child: ChildHandle, menu: MenuDocument, template: str) -> list[list[str]]:
    """Each page's text lines, in logical order, without the bidi controls pdftotext adds."""
    answer = child.render(make_job(MenuSource(menu=menu, template=template), child.scratch))  # type: ignore[arg-type]
    assert isinstance(answer, Rendered), answer
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", answer.output_path, "-"], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    return [[line.strip() for line in _BIDI_CONTROLS.sub("", page).splitlines() if line.strip()]
            for page in text.split("\f") if page.strip()]


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_latin_fields_of_a_hebrew_menu_read_in_logical_order(child: ChildHandle, template: str) -> None:
    (lines,) = _pages(child, _menu("rtl_hebrew"), template)
    text = "\n".join(lines)
    # the four misprints, each a whole field on its own line
    assert "🐄🔥 that made us famous" in lines  # the emoji stay before the words
    assert "Fish flown in fresh by our Tokyo team." in lines  # the full stop after "team"
    assert "Cut to order by the sushi team." in lines
    assert "12 MG Road, Bengaluru 560001" in text  # the house number before the street
    assert "MG Road, Bengaluru 560001 12" not in text


def test_latin_fields_of_an_arabic_menu_read_in_logical_order(child: ChildHandle) -> None:
    (lines,) = _pages(child, _menu("rtl_arabic"), "classic")
    text = "\n".join(lines)
    assert "Served with warm bread." in lines
    assert "Crispy, with tahini sauce." in lines
    assert "Office 1204, Bay Square 7, Dubai" in text
    assert "Beirut Street Kitchen" in lines


def _heading(line: str, mark: str) -> str:
    """A line without spaces, dashes and the continued mark, upper case (letter-spaced headings read
    back as "D E S S E RT S"). The mark is drawn, covered, after each section's first heading too:
    text extraction reads it there (the golden images show where it is visible)."""
    return re.sub(r"[\s—]", "", line).upper().removesuffix(mark)


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_pages_break_like_a_print_shop(child: ChildHandle, template: str) -> None:
    menu = _menu("breaks")
    mark = "(SUITE)"  # "continued" in the menu's language (fr_FR)
    titles = {_heading(section.title, mark) for section in menu.sections}
    pages = _pages(child, menu, template)
    assert len(pages) >= 2
    dishes = {item.name for section in menu.sections for item in section.items}
    first_dishes = {section.items[0].name for section in menu.sections}
    description = menu.sections[0].items[0].description
    continued = 0
    for number, lines in enumerate(pages, 1):
        # a heading never ends a page: the last line is a dish's text, the legend or the footer
        assert _heading(lines[-1], mark) not in titles, f"page {number} ends with the heading {lines[-1]!r}"
        # a dish never splits: every dish on this page has its description on this page
        names = [line for line in lines if line in dishes]
        assert names, f"page {number} holds no dish"  # so never the legend alone
        assert sum(line == description for line in lines) == len(names), f"page {number}: {lines}"
        if names[0] not in first_dishes:  # the page opens in the middle of a section
            assert _heading(lines[0], mark) in titles, f"page {number} continues a section without its heading"
            assert mark in lines[0].replace(" ", "").upper(), f"page {number}: the repeated heading is not marked"
            continued += 1
    assert continued >= 1, "no section continued with its heading repeated"
    # the legend lists every badge the menu uses, on the last page, together with dishes
    last = " ".join(pages[-1])
    assert all(word in last for word in ("végétarien", "végétalien", "sans gluten", "CASHER", "HALAL", "ÉPICÉ"))


@pytest.mark.parametrize("template", ["classic", "modern"])
def test_a_long_section_title_wraps_within_the_page(child: ChildHandle, template: str) -> None:
    """The repeated heading is one line (nowrap, cut with an ellipsis); it must not widen the section."""
    menu = _menu("breaks")
    long_title = "Entrées du marché, de la mer et du potager, selon la saison et l'humeur du chef Marcel"
    section = msgspec.structs.replace(menu.sections[0], title=long_title, items=menu.sections[0].items[:2])
    menu = msgspec.structs.replace(menu, sections=[section])
    answer = child.render(make_job(MenuSource(menu=menu, template=template), child.scratch))  # type: ignore[arg-type]
    assert isinstance(answer, Rendered), answer
    words = subprocess.run(["pdftotext", "-bbox", answer.output_path, "-"], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    page_width = float(re.search(r'<page width="([\d.]+)"', words).group(1))  # type: ignore[union-attr]
    right_edges = [float(x) for x in re.findall(r'xMax="([\d.]+)"', words)]
    assert max(right_edges) < page_width - 20, "text runs into the right margin or off the page"
    assert "12,50" in words  # the first dish's price is on the page


def _structure_types(path: str) -> Counter[str]:
    """How many of each structure element the tagged PDF has."""
    counts: Counter[str] = Counter()

    def walk(node: Any) -> None:
        node = node.get_object() if hasattr(node, "get_object") else node
        if not isinstance(node, dict):
            return
        if "/S" in node:
            counts[str(node["/S"])] += 1
        kids = node.get("/K")
        for kid in kids if isinstance(kids, list) else [kids]:
            walk(kid)

    walk(pypdf.PdfReader(path).trailer["/Root"]["/StructTreeRoot"])
    return counts


def test_the_tagged_pdf_reads_each_heading_once(child: ChildHandle) -> None:
    """A screen reader meets each section's heading once: the repeated one (aria-hidden) and the
    layout table (role=presentation) are not in the structure tree."""
    menu = _menu("breaks")
    answer = child.render(make_job(MenuSource(menu=menu), child.scratch))
    assert isinstance(answer, Rendered), answer
    assert answer.pages is not None and answer.pages >= 3
    counts = _structure_types(answer.output_path)
    assert counts["/H1"] == 1 and counts["/H2"] == len(menu.sections)
    assert not {"/Table", "/TR", "/TD", "/TH", "/THead"} & set(counts)
