"""The structured menu document rendered by the built-in templates."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.locales import LOCALE_PATTERN, LocaleError, parse_locale

ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
LongText = Annotated[str, msgspec.Meta(max_length=2000)]
DietaryTag = Literal["vegetarian", "vegan", "gluten-free", "dairy-free", "nut-free", "spicy", "halal", "kosher"]


# gc=False: a menu is plain data (no cycles), and 50,000 tracked items made the collector run
# during decoding: 52 ms of CPU on the event loop for a 2.9 MB menu body, 22 ms untracked (issue 22).
class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True, gc=False):
    pass


class MenuItem(_Strict):
    name: ShortText
    description: LongText = ""
    price: Annotated[str, msgspec.Meta(pattern=r"^\d{1,7}(\.\d{1,2})?$")] | None = None
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "USD"
    dietary: list[DietaryTag] = []
    image_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class MenuSection(_Strict):
    title: ShortText
    description: LongText = ""
    items: Annotated[list[MenuItem], msgspec.Meta(max_length=500)] = []


class Restaurant(_Strict):
    name: ShortText
    tagline: LongText = ""
    address: LongText = ""
    phone: Annotated[str, msgspec.Meta(max_length=50)] = ""
    logo_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class Theme(_Strict):
    accent_color: Annotated[str, msgspec.Meta(pattern=r"^#[0-9a-fA-F]{6}$")] = "#8a2be2"
    font: Literal["serif", "sans-serif"] = "serif"


class MenuDocument(_Strict):
    restaurant: Restaurant
    sections: Annotated[list[MenuSection], msgspec.Meta(min_length=1, max_length=100)]
    # "Dinner", "Lunch specials": with the restaurant's name, the PDF's title and the mail's subject
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    # how prices, digits and text direction are printed; unset: each price's currency's home locale
    locale: Annotated[str, msgspec.Meta(pattern=LOCALE_PATTERN)] | None = None
    theme: Theme = msgspec.field(default_factory=Theme)
    footer: LongText = ""

    def __post_init__(self) -> None:
        if self.locale is not None:
            try:
                parse_locale(self.locale)
            except LocaleError as exc:
                # msgspec reports a __post_init__ error at the menu; the leading `locale` moves it
                # to the locale field (shared/payload.py)
                raise ValueError(f"`locale`: {exc}") from None

    @property
    def title(self) -> str:
        """``Bistro Lumière — Dinner``, or the restaurant's name alone."""
        name = self.restaurant.name
        return f"{name} \u2014 {self.name}" if self.name else name
