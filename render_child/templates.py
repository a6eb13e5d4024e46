"""Menu templates (Jinja2, autoescaped) and the built-in test pages."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import jinja2

from shared.menu import MenuDocument

MENU_TEMPLATES = ("classic", "modern")
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "\u20ac", "GBP": "\u00a3"}
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
FONT_STACKS = {
    "serif": "Georgia, 'DejaVu Serif', 'Liberation Serif', 'Times New Roman', serif",
    "sans-serif": "'Helvetica Neue', Arial, 'DejaVu Sans', 'Liberation Sans', sans-serif",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("render_child", "templates"),
    autoescape=True,  # every template here renders untrusted menu text
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def format_price(price: str | None, currency: str) -> str:
    if not price:
        return ""
    try:
        amount = Decimal(price)
    except InvalidOperation:
        return price
    text = f"{amount:,.2f}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


_env.filters["price"] = format_price


def render_menu_html(menu: MenuDocument, template: str) -> str:
    """The menu as a complete HTML document, with the ``classic`` or ``modern`` look."""
    if template not in MENU_TEMPLATES:
        raise ValueError(f"unknown menu template {template!r}")
    tpl = _env.get_template(f"menu_{template}.html.j2")
    return tpl.render(
        menu=menu,
        accent=menu.theme.accent_color,
        font_stack=FONT_STACKS.get(menu.theme.font, FONT_STACKS["serif"]),
        dietary_labels=DIETARY_LABELS,
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
