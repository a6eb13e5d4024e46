"""Menu templates (Jinja2, autoescaped) and the built-in test pages."""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

from shared.contrast import palette
from shared.locales import format_price, locale_for, parse_locale
from shared.menu import DietaryTag, MenuDocument

MENU_TEMPLATES = ("classic", "modern")
# Badges in the order the legend lists them.
DIETARY_TAGS: tuple[DietaryTag, ...] = typing.get_args(DietaryTag)
# Each listed language's words: the badges (short on the dish, spelled out in the legend) and
# the mark of a heading repeated on the next page; English for a language not listed.
MENU_WORDS: dict[str, dict[str, Any]] = json.loads(
    resources.files("render_child").joinpath("templates/menu_words.json").read_text(encoding="utf-8")
)
# Scripts that take letter-spacing, small caps, uppercase and italics (the W3C: never track
# cursive or complex scripts; CJK, Arabic, Hebrew, Indic and Thai have no italics).
_CASED_RANGES = ((0x41, 0x24F), (0x370, 0x52F), (0x1D00, 0x1FFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF))


def takes_latin_typography(text: str) -> bool:
    """True when every letter of `text` is Latin, Greek or Cyrillic (digits, marks and emoji aside)."""
    return all(
        any(lo <= ord(ch) <= hi for lo, hi in _CASED_RANGES) for ch in text if ch.isalpha()
    )


# Noto (fonts-noto-core) for Latin, Greek, Cyrillic and each right-to-left or Indic script
# by name, before DejaVu, which would otherwise draw Arabic and Hebrew; Chinese, Japanese
# and Korean come from fontconfig's fallback by the page's lang (fonts-noto-cjk).
_SCRIPTS = {
    "serif": "'Noto Naskh Arabic', 'Noto Serif Hebrew', 'Noto Serif Devanagari', 'Noto Serif Thai'",
    "sans-serif": "'Noto Sans Arabic', 'Noto Sans Hebrew', 'Noto Sans Devanagari', 'Noto Sans Thai'",
}
FONT_STACKS = {
    "serif": f"'Noto Serif', {_SCRIPTS['serif']}, 'DejaVu Serif', Georgia, serif, 'Noto Color Emoji'",
    "sans-serif": f"'Noto Sans', {_SCRIPTS['sans-serif']}, 'DejaVu Sans', Arial, sans-serif, 'Noto Color Emoji'",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("render_child", "templates"),
    autoescape=True,  # every template here renders untrusted menu text
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


# Load Babel's number and currency data now, while the child boots, not in its first job
# (measured: ~70 ms for the first price; then ~8 ms for each further locale, ~70 us a price).
format_price("1", "USD")


@functools.lru_cache(maxsize=4096)
def _price(price: str | None, currency: str, menu_locale: str | None) -> str:
    """format_price, remembered: menus repeat the same few prices (~10 us each in Babel)."""
    return format_price(price, currency, menu_locale)


@dataclass(frozen=True)
class MenuWords:
    """The template's own words in the menu's language (or English): badges, legend, "continued"."""

    lang: str
    direction: str
    badges: dict[str, str]  # tag -> the badge on a dish
    legend: list[tuple[str, str]]  # (badge, meaning) of every badge the menu uses, in DIETARY_TAGS order
    continued: str


def menu_words(menu: MenuDocument) -> MenuWords:
    where = parse_locale(menu.locale) if menu.locale else None
    lang = where.locale.language if where is not None and where.locale.language in MENU_WORDS else "en"
    direction = where.direction if where is not None and lang != "en" else "ltr"
    words = MENU_WORDS[lang]
    badges: dict[str, str] = {tag: str(words["badges"][tag]["badge"]) for tag in DIETARY_TAGS}
    used = {tag for section in menu.sections for item in section.items for tag in item.dietary}
    legend = [(badges[tag], str(words["badges"][tag]["meaning"])) for tag in DIETARY_TAGS if tag in used]
    return MenuWords(lang=lang, direction=direction, badges=badges, legend=legend, continued=str(words["continued"]))


def render_menu_html(menu: MenuDocument, template: str) -> str:
    """The menu as a complete HTML document, with the ``classic`` or ``modern`` look."""
    if template not in MENU_TEMPLATES:
        raise ValueError(f"unknown menu template {template!r}")
    tpl = _env.get_template(f"menu_{template}.html.j2")
    currencies = [item.currency for section in menu.sections for item in section.items]
    where = locale_for(menu.locale, currencies[0] if currencies else "USD")
    return tpl.render(
        menu=menu,
        title=menu.title,
        lang=where.html_lang,
        direction=where.direction,
        price=lambda item: _price(item.price, item.currency, menu.locale),
        colours=palette(menu.theme.accent_color),
        font_stack=FONT_STACKS.get(menu.theme.font, FONT_STACKS["serif"]),
        words=menu_words(menu),
        latin=takes_latin_typography,
    )


TEST_TEMPLATES: dict[str, str] = {
    "busy-loop": "<!doctype html><title>busy</title><p>busy</p><script>while (true) {}</script>",
    "eat-memory": (
        "<!doctype html><title>eat</title><p>eating memory</p><script>"
        "const hoard = []; while (true) { hoard.push(new Array(1e7).fill(hoard.length + 0.5)); }"
        "</script>"
    ),
    # crash-renderer is not a page: the renderer navigates to chrome://crash.
}
