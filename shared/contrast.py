"""A menu's colours from its accent, readable by WCAG 2.2 AA (1.4.3: 4.5:1, 3:1 for large text).

One owner for the decision: the templates print with :func:`palette`, and the supervisor
notes in the job's metadata when the accent had to be darkened for text (:func:`palette_notes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.menu import Theme

AA_NORMAL = 4.5  # body text
AA_LARGE = 3.0  # 18 pt, or 14 pt bold, and larger
WHITE = "#ffffff"
BLACK = "#000000"
# The lightest and darkest backgrounds the accent is printed on as text (white paper, the
# modern template's #f5f5f7 cards): a text colour that passes on the card passes on paper.
CARD = "#f5f5f7"


def _channels(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def relative_luminance(colour: str) -> float:
    """WCAG's relative luminance of an ``#rrggbb`` colour (sRGB, linearised)."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in _channels(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: str, b: str) -> float:
    """WCAG contrast ratio, from 1 (same) to 21 (black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_on(background: str) -> str:
    """White or black, whichever reads better on `background` (one of them always passes 4.5:1)."""
    return WHITE if contrast_ratio(WHITE, background) >= contrast_ratio(BLACK, background) else BLACK


def darkened_for_text(colour: str, background: str = CARD, minimum: float = AA_NORMAL) -> str:
    """`colour` itself when it reads on `background`, else the lightest darker shade of the same hue that does."""
    if contrast_ratio(colour, background) >= minimum:
        return colour
    r, g, b = _channels(colour)
    for step in range(1, 101):  # scale towards black in 1% steps; black passes on a light background
        factor = 1 - step / 100
        shade = f"#{round(r * factor):02x}{round(g * factor):02x}{round(b * factor):02x}"
        if contrast_ratio(shade, background) >= minimum:
            return shade
    return BLACK


@dataclass(frozen=True)
class Palette:
    accent: str  # decoration: rules, bars, header background
    on_accent: str  # text printed on the accent (the modern header, badges)
    accent_text: str  # the accent used as text on paper or cards (headings, prices)

    @property
    def darkened(self) -> bool:
        return self.accent_text.lower() != self.accent.lower()


def palette(accent: str) -> Palette:
    accent = accent.lower()
    return Palette(accent=accent, on_accent=text_on(accent), accent_text=darkened_for_text(accent))


def palette_notes(accent: str) -> dict[str, object]:
    """What the job's metadata says of its colours: the text colour, and whether the accent was darkened."""
    colours = palette(accent)
    notes: dict[str, object] = {"header_text_color": colours.on_accent}
    if colours.darkened:
        notes["accent_darkened_for_text"] = {
            "accent": colours.accent,
            "text_color": colours.accent_text,
            "contrast": round(contrast_ratio(colours.accent_text, CARD), 2),
            "was": round(contrast_ratio(colours.accent, CARD), 2),
        }
    return notes


def menu_colour_notes(payload: Any) -> dict[str, object] | None:
    """:func:`palette_notes` of a stored payload's menu (its accent, or the default), else None."""
    source = payload.get("source") if isinstance(payload, dict) else None
    if not isinstance(source, dict) or source.get("kind") != "menu" or not isinstance(source.get("menu"), dict):
        return None
    theme = source["menu"].get("theme")
    accent = theme.get("accent_color") if isinstance(theme, dict) else None
    if not isinstance(accent, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", accent):
        accent = Theme().accent_color
    return palette_notes(accent)
