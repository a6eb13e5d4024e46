"""A menu's locale: which language tag, text direction and number format it prints with.

Prices are formatted by Babel (CLDR data), never by hand. A menu without a locale
formats each price in its currency's home locale (EUR in de_DE, JPY in ja_JP, ...).
Digits stay Latin unless the locale asks for others with ``@numbers=``, as in
``ar_AE@numbers=arab`` (CLDR's own default for ar_AE is Latin digits).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency

LOCALE_PATTERN = r"^[a-z]{2,3}([_-][A-Z][a-z]{3})?([_-]([A-Z]{2}|\d{3}))?(@numbers=[a-z]{4,8})?$"

# A currency's home locale: where a menu priced in it is most likely printed.
CURRENCY_LOCALES = {
    "USD": "en_US",
    "EUR": "de_DE",
    "GBP": "en_GB",
    "JPY": "ja_JP",
    "CHF": "de_CH",
    "INR": "en_IN",
    "AED": "ar_AE",
    "ILS": "he_IL",
    "CNY": "zh_CN",
    "KRW": "ko_KR",
    "THB": "th_TH",
    "CAD": "en_CA",
    "AUD": "en_AU",
    "SEK": "sv_SE",
    "NOK": "nb_NO",
    "DKK": "da_DK",
    "PLN": "pl_PL",
    "CZK": "cs_CZ",
    "RUB": "ru_RU",
    "TRY": "tr_TR",
    "MXN": "es_MX",
    "BRL": "pt_BR",
}
FALLBACK_LOCALE = "en_US"

# Babel switches separators for a numbering system but not the digits themselves.
_NATIVE_DIGITS = {
    "arab": "٠١٢٣٤٥٦٧٨٩",
    "arabext": "۰۱۲۳۴۵۶۷۸۹",
    "deva": "०१२३४५६७८९",
    "beng": "০১২৩৪৫৬৭৮৯",
    "thai": "๐๑๒๓๔๕๖๗๘๙",
}


class LocaleError(ValueError):
    """The locale is malformed or unknown to CLDR."""


@dataclass(frozen=True)
class MenuLocale:
    locale: Locale
    numbers: str  # a CLDR numbering system: latn, arab, ...

    @property
    def html_lang(self) -> str:
        """The BCP 47 tag for ``<html lang>`` (ar-AE, zh-Hant-TW)."""
        return "-".join(p for p in (self.locale.language, self.locale.script, self.locale.territory) if p)

    @property
    def direction(self) -> str:
        """``rtl`` for Arabic, Hebrew, Persian, Urdu...; ``ltr`` otherwise."""
        return "rtl" if self.locale.text_direction == "rtl" else "ltr"


@functools.lru_cache(maxsize=256)
def parse_locale(text: str) -> MenuLocale:
    """``de_DE``, ``de-DE``, ``ar_AE@numbers=arab`` -> MenuLocale, or LocaleError naming the problem."""
    if not re.fullmatch(LOCALE_PATTERN, text):
        raise LocaleError(f"locale {text!r} is not a locale like 'de_DE' or 'ar_AE@numbers=arab'")
    tag, _, numbers = text.partition("@numbers=")
    try:
        locale = Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError) as exc:
        raise LocaleError(f"locale {text!r} is unknown ({exc})") from None
    numbers = numbers or "latn"
    if numbers != "latn" and numbers not in _NATIVE_DIGITS:
        known = ", ".join(["latn", *_NATIVE_DIGITS])
        raise LocaleError(f"locale {text!r}: numbering system {numbers!r} is not one of {known}")
    if numbers != "latn" and numbers not in locale.number_symbols:
        raise LocaleError(f"locale {text!r}: CLDR has no {numbers!r} numbers for {tag}")
    return MenuLocale(locale=locale, numbers=numbers)


def locale_for(menu_locale: str | None, currency: str) -> MenuLocale:
    """The menu's own locale, else the currency's home locale, else en_US."""
    return parse_locale(menu_locale or CURRENCY_LOCALES.get(currency, FALLBACK_LOCALE))


def format_price(price: str | None, currency: str, menu_locale: str | None = None) -> str:
    """``9.5`` EUR in de_DE -> ``9,50 €``; JPY has no minor unit (``￥500`` in ja_JP, ``¥500`` in en_US)."""
    if not price:
        return ""
    try:
        amount = Decimal(price)
    except InvalidOperation:
        return price
    where = locale_for(menu_locale, currency)
    # an ISO code CLDR does not know prints as the code itself ("9,50 XYZ")
    text = format_currency(amount, currency, locale=where.locale, numbering_system=where.numbers)
    digits = _NATIVE_DIGITS.get(where.numbers)
    return text.translate(str.maketrans("0123456789", digits)) if digits else text
