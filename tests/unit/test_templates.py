"""Menu templates: autoescaping in every field, prices, print CSS, and the sample menus."""

from __future__ import annotations

import re
from pathlib import Path

import markupsafe
import msgspec
import pytest

from render_child.templates import (
    DIETARY_TAGS,
    MENU_TEMPLATES,
    MENU_WORDS,
    menu_words,
    render_menu_html,
    takes_latin_typography,
)
from shared.contrast import AA_NORMAL, CARD, contrast_ratio, palette, palette_notes
from shared.locales import CURRENCY_LOCALES, LocaleError, format_price, parse_locale
from shared.menu import MenuDocument, MenuItem, MenuSection, Restaurant, Theme
from shared.payload import PayloadError, parse_payload

pytestmark = [pytest.mark.timeout(300)]

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
        "bdi", "table", "thead", "tbody", "tr", "td",
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
    assert "9,50\u00a0\u20ac" in html  # EUR without a locale: its home locale, de_DE
    assert "Noto Sans" in html  # the sans-serif theme font


def test_remembered_prices_follow_each_menus_locale() -> None:
    # prices are cached per (price, currency, locale): the same price in two locales, in turn
    for _ in range(2):
        for locale, text in ((None, "9,50\u00a0\u20ac"), ("en_US", "\u20ac9.50"), ("ar_AE@numbers=arab", "\u0669")):
            html = render_menu_html(msgspec.structs.replace(evil_menu(), locale=locale), "classic")
            assert text in html, locale


def test_templates_look_different() -> None:
    menu = evil_menu()
    assert render_menu_html(menu, "classic") != render_menu_html(menu, "modern")
    with pytest.raises(ValueError, match="unknown menu template"):
        render_menu_html(menu, "fancy")


NBSP = "\u00a0"
RLM = "\u200f"


@pytest.mark.parametrize(
    ("price", "currency", "locale", "expected"),
    [
        ("500", "JPY", "en_US", "\u00a5500"),  # yen has no minor unit
        ("500", "JPY", None, "\uffe5500"),  # ja_JP, JPY's home: CLDR's full-width yen sign
        ("1250", "JPY", "ja_JP", "\uffe51,250"),
        ("9.5", "EUR", "de_DE", f"9,50{NBSP}\u20ac"),
        ("9.5", "EUR", "fr_FR", f"9,50{NBSP}\u20ac"),
        ("1250", "EUR", None, f"1.250,00{NBSP}\u20ac"),  # de_DE, EUR's home
        ("9.5", "EUR", "nl_NL", f"\u20ac{NBSP}9,50"),
        ("9.5", "EUR", "en_IE", "\u20ac9.50"),
        ("9.5", "USD", "en_US", "$9.50"),
        ("9.5", "USD", None, "$9.50"),
        ("9.5", "GBP", "en_GB", "\u00a39.50"),
        ("1234.5", "GBP", None, "\u00a31,234.50"),
        ("9.5", "CHF", "de_CH", f"CHF{NBSP}9.50"),
        ("9.5", "CHF", "fr_CH", f"9,50{NBSP}CHF"),
        ("1234567.5", "INR", "en_IN", "\u20b912,34,567.50"),  # lakh grouping
        ("1234567.5", "INR", None, "\u20b912,34,567.50"),
        ("9.5", "AED", "ar_AE", f"{RLM}9.50{NBSP}\u062f.\u0625.{RLM}"),  # Latin digits: CLDR's ar_AE default
        ("9.5", "AED", "ar_AE@numbers=arab", f"{RLM}\u0669\u066b\u0665\u0660{NBSP}\u062f.\u0625.{RLM}"),
        ("9.5", "AED", "en_AE", "AED9.50"),
        ("12", "CAD", "fr_CA", f"12,00{NBSP}$"),
        ("9.5", "XTS", "de_DE", f"9,50{NBSP}XTS"),  # a code CLDR has no symbol for prints as itself
        (None, "USD", None, ""),
    ],
)
def test_format_price(price: str | None, currency: str, locale: str | None, expected: str) -> None:
    assert format_price(price, currency, locale) == expected


@pytest.mark.parametrize(
    ("locale", "lang", "direction"),
    [("ar_AE", "ar-AE", "rtl"), ("he_IL", "he-IL", "rtl"), ("fa-IR", "fa-IR", "rtl"), ("de_DE", "de-DE", "ltr"),
     ("zh_Hant_TW", "zh-Hant-TW", "ltr"), ("ja", "ja", "ltr")],
)
def test_locale_direction(locale: str, lang: str, direction: str) -> None:
    where = parse_locale(locale)
    assert (where.html_lang, where.direction) == (lang, direction)


@pytest.mark.parametrize(
    ("locale", "words"),
    [("xx_YY", "unknown"), ("de_DE@numbers=klingon", "numbering system"), ("German", "not a locale")],
)
def test_bad_locale_is_named(locale: str, words: str) -> None:
    with pytest.raises(LocaleError, match=words):
        parse_locale(locale)
    menu = {"restaurant": {"name": "X"}, "sections": [{"title": "S"}], "locale": locale}
    with pytest.raises(PayloadError, match="locale"):
        parse_payload({"source": {"kind": "menu", "menu": menu}}, "pdf")


@pytest.mark.parametrize("locale", ["ar_AE", "he_IL"])
@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_rtl_menu(template: str, locale: str) -> None:
    menu = msgspec.structs.replace(evil_menu(), locale=locale)
    html = render_menu_html(menu, template)
    assert f'<html lang="{locale.replace("_", "-")}" dir="rtl">' in html
    assert "inline-start" in html or "leader" in html  # logical CSS or a flex leader: both mirror under rtl


def test_ltr_menu_and_title() -> None:
    menu = msgspec.structs.replace(evil_menu(), locale="de_DE", name="Mittagskarte")
    html = render_menu_html(menu, "classic")
    assert '<html lang="de-DE" dir="ltr">' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html.split("<title>")[1].split("</title>")[0]
    assert menu.title.endswith(" \u2014 Mittagskarte")


@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_section_heading_css_matches_the_markup(template: str) -> None:
    """The heading and description sit in div.section-lead; the CSS must select them there."""
    html = render_menu_html(evil_menu(), template)
    assert '<div class="section-lead">\n  <h2 class="latin">' in html
    assert ".section-lead > h2 {" in html or ".section-lead > h2, p.continued {" in html
    assert ".section-lead > .section-description {" in html
    assert "section.menu-section > h2" not in html


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.json")) or ["none"])
@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_samples_render(sample: str, template: str) -> None:
    if sample == "none":
        pytest.skip("no sample menus")
    menu = msgspec.json.decode((SAMPLES / sample).read_bytes(), type=MenuDocument)
    html = render_menu_html(menu, template)
    for section in menu.sections:
        for item in section.items:
            assert str(markupsafe.escape(item.name)) in html
    # the showcase reads like a real menu; markup in text belongs to the escaping tests above
    text = (SAMPLES / sample).read_text(encoding="utf-8")
    assert "<" not in text and ">" not in text


@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_every_used_badge_is_in_the_legend(template: str) -> None:
    menu = evil_menu()  # vegan and spicy
    assert menu_words(menu).legend == [("VG", "vegan"), ("SPICY", "spicy")]
    html = render_menu_html(menu, template)
    assert '<p class="legend" lang="en" dir="ltr">' in html and ">VG</span><bdi>vegan</bdi><" in html
    assert ">SPICY</span></span>" in html  # the badge says it all: its meaning is not repeated
    plain = msgspec.structs.replace(menu, sections=[MenuSection(title="S", items=[MenuItem(name="Tea")])])
    assert menu_words(plain).legend == []
    assert 'class="legend"' not in render_menu_html(plain, template)


@pytest.mark.parametrize(
    ("locale", "lang", "direction", "vegan", "spicy"),
    [(None, "en", "ltr", ("VG", "vegan"), "SPICY"), ("fr_CA", "fr", "ltr", ("VG", "végétalien"), "ÉPICÉ"),
     ("de_DE", "de", "ltr", ("VG", "vegan"), "SCHARF"),
     ("ar_AE@numbers=arab", "ar", "rtl", ("نباتي صرف", "نباتي صرف"), "حار"),
     ("he_IL", "he", "rtl", ("טבעוני", "טבעוני"), "חריף"), ("hi_IN", "hi", "ltr", ("वीगन", "वीगन"), "तीखा"),
     ("fa_IR", "en", "ltr", ("VG", "vegan"), "SPICY"), ("ja_JP", "ja", "ltr", ("ヴィーガン", "ヴィーガン"), "辛口")],
)
def test_badges_speak_the_menus_language(
    locale: str | None, lang: str, direction: str, vegan: tuple[str, str], spicy: str
) -> None:
    words = menu_words(msgspec.structs.replace(evil_menu(), locale=locale))
    assert (words.lang, words.direction) == (lang, direction)
    assert words.legend[0] == vegan
    assert words.badges["spicy"] == spicy == words.legend[1][0]


def test_halal_kosher_spicy_in_the_legend_and_no_latin_badges_in_arabic() -> None:
    menu = msgspec.structs.replace(evil_menu(), locale="ar_AE", sections=[MenuSection(title="S", items=[
        MenuItem(name="Shawarma", dietary=["halal", "spicy"]), MenuItem(name="Bagel", dietary=["kosher"])])])
    words = menu_words(menu)
    assert [badge for badge, _ in words.legend] == ["حار", "حلال", "كوشر"]
    html = render_menu_html(menu, "modern")
    assert "SPICY" not in html and "HALAL" not in html and "KOSHER" not in html


# The locales the project lists: the README's legend languages and the currencies' home locales.
LISTED_LANGUAGES = {"en", "fr", "de", "es", "it", "nl", "pt", "ar", "he", "ja", "zh", "ko"}


def test_every_listed_language_has_every_word() -> None:
    assert set(MENU_WORDS) >= LISTED_LANGUAGES | {code.split("_")[0] for code in CURRENCY_LOCALES.values()}
    for lang, words in MENU_WORDS.items():
        assert set(words["badges"]) == set(DIETARY_TAGS), lang
        assert all(w["badge"].strip() and w["meaning"].strip() for w in words["badges"].values()), lang
        assert words["continued"].strip(), lang
        parse_locale(lang)  # a language CLDR knows


@pytest.mark.parametrize(
    ("text", "latin"),
    [("Desserts", True), ("Entrées 🍰 2", True), ("Ψάρια", True), ("Закуски", True), ("शाकाहारी थाली", False),
     ("อาหารไทย", False), ("מנות עיקריות", False), ("日本 · Japan 🍣", False), ("مشاوي", False), ("12 · 🍣", True)],
)
def test_tracking_and_italics_only_for_latin_greek_cyrillic(text: str, latin: bool) -> None:
    assert takes_latin_typography(text) is latin


@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_no_synthetic_styles_and_no_tracking_outside_latin(template: str) -> None:
    section = MenuSection(title="शाकाहारी थाली", description="ताज़ी", items=[MenuItem(name="x")])
    html = render_menu_html(msgspec.structs.replace(evil_menu(), sections=[section]), template)
    assert "font-synthesis: none" in html
    assert '<h2 class="other-script">' in html
    # letter-spacing, small caps, uppercase and italics are only ever declared for .latin
    style = html.split("<style>")[1].split("</style>")[0]
    for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", style):
        if re.search(r"letter-spacing: 0\.\d|small-caps|uppercase|font-style: italic", body):
            assert ".latin" in selector, selector


@pytest.mark.parametrize(
    ("accent", "on_accent", "darkened"),
    [("#ffffff", "#000000", True), ("#ffff00", "#000000", True), ("#b8860b", "#000000", True),
     ("#000000", "#ffffff", False), ("#8a2be2", "#ffffff", False)],
)
def test_header_text_meets_wcag_aa_on_the_accent(accent: str, on_accent: str, darkened: bool) -> None:
    colours = palette(accent)
    assert colours.on_accent == on_accent
    assert contrast_ratio(colours.on_accent, accent) >= AA_NORMAL
    assert contrast_ratio(colours.accent_text, CARD) >= AA_NORMAL
    assert contrast_ratio(colours.accent_text, "#ffffff") >= AA_NORMAL
    assert colours.darkened is darkened
    notes = palette_notes(accent)
    assert notes["header_text_color"] == on_accent
    assert ("accent_darkened_for_text" in notes) is darkened
    html = render_menu_html(msgspec.structs.replace(evil_menu(), theme=Theme(accent_color=accent)), "modern")
    assert f"--on-accent: {on_accent};" in html and f"--accent-text: {colours.accent_text};" in html
    assert "opacity" not in html  # faded header text would undo the contrast


def test_gold_accent_measured_as_the_issue_did() -> None:
    assert round(contrast_ratio("#ffffff", "#b8860b"), 2) == 3.25  # white on gold: the issue's 3.25:1
    assert palette("#b8860b").accent_text == "#916a09"
    assert round(contrast_ratio("#916a09", CARD), 2) >= 4.5


@pytest.mark.parametrize("template", MENU_TEMPLATES)
def test_every_field_is_isolated_in_its_own_direction(template: str) -> None:
    menu = msgspec.json.decode((Path(__file__).resolve().parents[1] / "menus" / "rtl_hebrew.json").read_bytes(),
                               type=MenuDocument)
    html = render_menu_html(menu, template)
    assert '<html lang="he-IL" dir="rtl">' in html
    for text in ("🐄🔥 that made us famous", "12 MG Road, Bengaluru 560001", "日本 · Japan 🍣",
                 "Fish flown in fresh by our Tokyo team.", "Salmon nigiri (2 pcs)", "ראמן Tonkotsu 🍜",
                 "Open 12:00\u201323:00 · פתוח כל יום · 03-555-0147", "גריל הכרמל · Carmel Grill"):
        assert f">{markupsafe.escape(text)}</bdi>" in html, text
    # <bdi> is dir="auto" and unicode-bidi: isolate by the HTML standard; the price too
    assert re.search(r'<span class="item-price"><bdi>[^<]+</bdi></span>', html)
