"""Menu templates (Jinja2, autoescaped) and the built-in test pages."""

from __future__ import annotations

import jinja2

from shared.locales import format_price, locale_for
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
DIETARY_WORDS = {
    "vegetarian": "vegetarian",
    "vegan": "vegan",
    "gluten-free": "gluten-free",
    "dairy-free": "dairy-free",
    "nut-free": "nut-free",
}
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


def dietary_legend(menu: MenuDocument) -> list[tuple[str, str]]:
    """(badge, meaning) for every abbreviated badge the menu shows, in the badges' order."""
    used = {tag for section in menu.sections for item in section.items for tag in item.dietary}
    return [(DIETARY_LABELS[tag], words) for tag, words in DIETARY_WORDS.items() if tag in used]


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
        price=lambda item: format_price(item.price, item.currency, menu.locale),
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
