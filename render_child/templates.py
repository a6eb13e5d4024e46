"""Menu templates (Jinja2, autoescaped) and the built-in test pages."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import jinja2

from shared.locales import format_price, locale_for, parse_locale
from shared.menu import MenuDocument

MENU_TEMPLATES = ("classic", "modern")
# Short badges on the items, explained by a legend under the menu whenever one appears.
DIETARY_LABELS = {
    "vegetarian": "V",
    "vegan": "VG",
    "gluten-free": "GF",
    "dairy-free": "DF",
    "nut-free": "NF",
    "spicy": "Spicy",
    "halal": "Halal",
    "kosher": "Kosher",
}
ABBREVIATED = ("vegetarian", "vegan", "gluten-free", "dairy-free", "nut-free")
# The legend's words in the menu's language where we have them, else in English.
LEGEND_WORDS: dict[str, dict[str, str]] = json.loads(
    resources.files("render_child").joinpath("templates/dietary_legend.json").read_text(encoding="utf-8")
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
class Legend:
    lang: str
    direction: str
    entries: list[tuple[str, str]]  # (badge, meaning), in the badges' order


def dietary_legend(menu: MenuDocument) -> Legend:
    """The abbreviated badges the menu shows, explained in its language (or English)."""
    used = {tag for section in menu.sections for item in section.items for tag in item.dietary}
    where = parse_locale(menu.locale) if menu.locale else None
    lang = where.locale.language if where is not None and where.locale.language in LEGEND_WORDS else "en"
    direction = where.direction if where is not None and lang != "en" else "ltr"
    words = LEGEND_WORDS[lang]
    entries = [(DIETARY_LABELS[tag], words[tag]) for tag in ABBREVIATED if tag in used]
    return Legend(lang=lang, direction=direction, entries=entries)


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
        accent=menu.theme.accent_color,
        font_stack=FONT_STACKS.get(menu.theme.font, FONT_STACKS["serif"]),
        dietary_labels=DIETARY_LABELS,
        legend=dietary_legend(menu),
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
