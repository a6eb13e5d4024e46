"""Menu templates: autoescaping in every field, prices, print CSS, and the sample menus."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from render_child.templates import MENU_TEMPLATES, format_price, render_menu_html
from shared.menu import MenuDocument, MenuItem, MenuSection, Restaurant, Theme

pytestmark = [pytest.mark.timeout(60)]

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def evil_menu() -> MenuDocument:
    return MenuDocument(
        restaurant=Restaurant(
            name=EVIL, tagline=EVIL, address=EVIL, phone="<b>555</b>", logo_url='x" onerror="alert(3)'
        ),
        sections=[
            MenuSection(
                title=EVIL,
                description=EVIL,
                items=[
                    MenuItem(
                        name=EVIL,
                        description=EVIL,
                        price="9.50",
                        currency="EUR",
                        dietary=["vegan", "spicy"],
                        image_url='javascript:alert(4)" onload="alert(5)',
                    ),
                    MenuItem(name=EVIL, description=EVIL),
                ],
            )
        ],
        theme=Theme(accent_color="#123456", font="sans-serif"),
        footer=EVIL,
    )


@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_every_field_is_escaped(template: str) -> None:
    html = render_menu_html(evil_menu(), template)
    assert "<script" not in html.lower()
    assert "<img src=x" not in html
    assert "<b>555</b>" not in html
    assert 'onerror="alert(3)' not in html
    assert 'onload="alert(5)' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    # the only tags are the template's own
    tags = set(re.findall(r"<\s*([a-zA-Z0-9]+)", html))
    assert tags <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "header",
        "h1",
        "p",
        "div",
        "img",
        "section",
        "h2",
        "span",
        "article",
        "main",
        "footer",
    }, tags


@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_print_css_and_content(template: str) -> None:
    html = render_menu_html(evil_menu(), template)
    assert "break-inside: avoid" in html
    assert "page-break-inside: avoid" in html
    assert "break-after: avoid" in html  # section headers are not orphaned
    assert "@page" in html
    assert "#123456" in html
    assert "\u20ac9.50" in html
    assert "Arial" in html  # the sans-serif theme font


def test_templates_look_different() -> None:
    menu = evil_menu()
    assert render_menu_html(menu, "classic") != render_menu_html(menu, "modern")
    with pytest.raises(ValueError, match="unknown menu template"):
        render_menu_html(menu, "fancy")


@pytest.mark.parametrize(
    ("price", "currency", "expected"),
    [
        ("12", "USD", "$12.00"),
        ("12.5", "EUR", "\u20ac12.50"),
        ("1234.5", "GBP", "\u00a31,234.50"),
        ("7.25", "JPY", "7.25 JPY"),
        (None, "USD", ""),
    ],
)
def test_format_price(price: str | None, currency: str, expected: str) -> None:
    assert format_price(price, currency) == expected


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.json")) or ["none"])
@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_samples_render(sample: str, template: str) -> None:
    if sample == "none":
        pytest.skip("no sample menus")
    menu = msgspec.json.decode((SAMPLES / sample).read_bytes(), type=MenuDocument)
    html = render_menu_html(menu, template)
    for section in menu.sections:
        for item in section.items:
            assert item.name.replace("'", "&#39;") in html
