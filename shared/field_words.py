"""A validation error in the words of the person who wrote the document.

msgspec says ``Expected `str` matching regex '^\\d{1,7}(\\.\\d{1,2})?$' - at
`$.source.menu.sections[0].items[1].price```. A restaurant owner needs: which dish, which
field, what they wrote, what is expected and an example:

    Price of "Salade niçoise" (section "Entrées"): you wrote 9,50. Write the price as
    text with a dot before the cents, like "9.50".

:func:`owner_message` builds that sentence from the error, the path and the document
itself (to name dishes and sections as the owner wrote them); the dotted path stays
beside it for programs (``PayloadError.field``, the HTTP 422's ``field``).
"""

from __future__ import annotations

import enum
import re
import typing
from typing import Any

import msgspec

Path = list[str | int]

# What a field expects, with an example, by the field's own name (the last key of its path).
_EXPECTED: dict[str, str] = {
    "price": 'Write the price as text with a dot before the cents, like "9.50" (or "12" for whole amounts)',
    "currency": 'Write a three-letter currency code in capitals, like "EUR" or "USD"',
    "locale": 'Write a locale: a language and a country, like "fr_FR", "en_US" or "ar_AE"',
    "accent_color": 'Write a colour as # and six hexadecimal digits, like "#8a2be2"',
    "email": 'Write an email address, like "chef@example.com"',
    "filename": 'Use letters, digits, spaces, dots, dashes and underscores only, like "dinner menu"',
    "image_url": 'Write a web address, like "https://example.com/photo.jpg"',
    "logo_url": 'Write a web address, like "https://example.com/logo.png"',
    "url": 'Write a web address, like "https://example.com/menu"',
    "top": 'Write a length with its unit, like "10mm"',
    "right": 'Write a length with its unit, like "10mm"',
    "bottom": 'Write a length with its unit, like "10mm"',
    "left": 'Write a length with its unit, like "10mm"',
}
# How a field is called in a sentence.
_CALLED: dict[str, str] = {
    "name": "name",
    "tagline": "tagline",
    "address": "address",
    "phone": "phone number",
    "logo_url": "logo address",
    "image_url": "photo address",
    "accent_color": "accent colour",
    "dietary": "dietary badge",
    "page_size": "page size",
    "full_page": "full-page setting",
    "device_scale_factor": "scale factor",
    "print_background": "background setting",
    "kind": "kind",
}
_TYPE_WORDS = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "object": "a group of fields in { }",
    "array": "a list in [ ]",
    "null": "nothing (null)",
}


def _called(key: str) -> str:
    return _CALLED.get(key, key.replace("_", " "))


def _at(data: Any, path: Path) -> tuple[bool, Any]:
    """(found, value) of `path` in the raw document."""
    for key in path:
        in_list = isinstance(key, int) and isinstance(data, list) and 0 <= key < len(data)
        if in_list or (isinstance(key, str) and isinstance(data, dict) and key in data):
            data = data[key]
        else:
            return False, None
    return True, data


def _quoted(value: Any) -> str:
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f'"{text}"'
    if isinstance(value, bool) or value is None:
        return msgspec.json.encode(value).decode()
    if isinstance(value, int | float):
        return f"{value} (a number, without quotes)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a group of fields"
    return str(value)


def _text_of(data: Any, path: Path, key: str) -> str:
    found, value = _at(data, [*path, key])
    return value.strip() if found and isinstance(value, str) and value.strip() else ""


def where(path: Path, data: Any) -> str:
    """``price of "Soupe" (section "Entrées")``, ``the restaurant's name``, ``the PDF's scale``."""
    keys = list(path)
    if keys and keys[0] == "payload":  # the HTTP body wraps the document in "payload"
        data = _at(data, ["payload"])[1]
        keys = keys[1:]
    if keys[:2] == ["source", "menu"]:
        return _menu_where(keys[2:], data, ["source", "menu"])
    if keys[:1] == ["source"]:
        return f"the document's {_called(str(keys[1]))}" if len(keys) > 1 else "the document"
    if keys[:1] in (["pdf"], ["image"]):
        part = "PDF" if keys[0] == "pdf" else "image"
        rest = " ".join(_called(str(k)) for k in keys[1:] if isinstance(k, str))
        return f"the {part}'s {rest}" if rest else f"the {part} settings"
    return " ".join(_called(str(k)) for k in keys if isinstance(k, str)) or "the request"


def _menu_where(keys: Path, data: Any, base: Path) -> str:
    if not keys:
        return "the menu"
    head = keys[0]
    if head == "restaurant":
        return f"the restaurant's {_called(str(keys[1]))}" if len(keys) > 1 else "the restaurant"
    if head == "theme":
        return f"the menu's {_called(str(keys[1]))}" if len(keys) > 1 else "the menu's theme"
    if head == "sections" and len(keys) > 1 and isinstance(keys[1], int):
        return _section_where(keys[1], keys[2:], data, base)
    if head == "sections":
        return "the menu's sections"
    return f"the menu's {_called(str(head))}"


def _section_where(index: int, rest: Path, data: Any, base: Path) -> str:
    """A place inside section `index`, named by its title and its dish's name where they are given."""
    section_path = [*base, "sections", index]
    title = _text_of(data, section_path, "title")
    section = f'section "{title}"' if title else f"section {index + 1}"
    if rest[:1] == ["items"] and len(rest) > 1 and isinstance(rest[1], int):
        dish_name = _text_of(data, [*section_path, "items", rest[1]], "name")
        dish = f'"{dish_name}"' if dish_name else f"dish {rest[1] + 1}"
        field = [k for k in rest[2:] if isinstance(k, str)]
        if field:
            return f"{_called(field[0])} of {dish} ({section})"
        return f"dish {dish} ({section})"
    field = [k for k in rest if isinstance(k, str)]
    return f"{_called(field[0])} of {section}" if field else section


# ---- the schema: what a field may hold ------------------------------------------------


def _unwrap(tp: Any) -> list[Any]:
    """The alternatives of a type, without Annotated and None."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [alt for arg in typing.get_args(tp) for alt in _unwrap(arg)]
    return [] if tp is type(None) else [tp]


def _fields(struct: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(struct, include_extras=True)
    return {f.encode_name: hints[f.name] for f in msgspec.structs.fields(struct)}


def _step(tp: Any, key: str | int) -> Any:
    for alt in _unwrap(tp):
        origin = typing.get_origin(alt)
        if isinstance(key, int) and origin in (list, tuple):
            return typing.get_args(alt)[0]
        if isinstance(key, str) and isinstance(alt, type) and issubclass(alt, msgspec.Struct):
            fields = _fields(alt)
            if key in fields:
                return fields[key]
    return None


def allowed_values(root: Any, path: Path) -> list[str]:
    """The values a Literal or enum field (or a tagged union's tag) allows, in order; [] otherwise."""
    tp: Any = root
    for index, key in enumerate(path):
        parent = tp
        tp = _step(tp, key)
        if tp is None:
            if index == len(path) - 1:  # a tag field is no struct field: list the union's tags
                tags = [alt.__struct_config__.tag for alt in _unwrap(parent)
                        if isinstance(alt, type) and issubclass(alt, msgspec.Struct)
                        and alt.__struct_config__.tag_field == key]
                # test-template is for the test suite only, refused by every real worker
                return [str(t) for t in tags if t is not None and not str(t).startswith("test-")]
            return []
    values: list[str] = []
    for alt in _unwrap(tp):
        if typing.get_origin(alt) is typing.Literal:
            values += [str(v) for v in typing.get_args(alt)]
        elif isinstance(alt, type) and issubclass(alt, enum.Enum):
            values += [str(m.value) for m in alt]
    return values


def known_fields(root: Any, path: Path) -> list[str]:
    tp: Any = root
    for key in path:
        tp = _step(tp, key)
        if tp is None:
            return []
    return [name for alt in _unwrap(tp) if isinstance(alt, type) and issubclass(alt, msgspec.Struct)
            for name in _fields(alt)]


# ---- the sentence ---------------------------------------------------------------------

_EXPECTED_TYPE = re.compile(r"^Expected `([^`]+)`(?:, got `([^`]+)`)?$")
_LENGTH = re.compile(r"^Expected `(str|array|object)` of length (>=|<=) (\d+)$")
_RANGE = re.compile(r"^Expected `(int|float)` (>=|<=|>|<) ([\d.]+)$")


def _one_of(values: list[str]) -> str:
    quoted = [f'"{v}"' for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def owner_message(text: str, path: Path, data: Any, root: Any) -> str:
    """The owner's sentence for msgspec's `text` about `path` (the field's own path, not its parent's)."""
    key = next((k for k in reversed(path) if isinstance(k, str)), "")
    label = where(path, data)
    subject = label[:1].upper() + label[1:]
    found, value = _at(data, path)
    wrote = f"you wrote {_quoted(value)}. " if found else ""
    expected = _EXPECTED.get(key, "")
    allowed = allowed_values(root, path)
    if text.startswith("Object missing required field"):
        return f"{subject} is missing. {expected or 'Add it'}."
    if text.startswith("Object contains unknown field"):
        fields = known_fields(root, path[:-1])
        known = f" The fields here are: {', '.join(fields)}." if fields else ""
        unknown = f'there is no field called "{key}" here; remove it or correct its spelling.'
        return f"{subject}: {unknown}{known}"
    if allowed and (text.startswith(("Invalid enum value", "Invalid value")) or "got" in text):
        return f"{subject}: {wrote}Choose one of {_one_of(allowed)}."
    if expected:
        return f"{subject}: {wrote}{expected}."
    if "matching regex" in text:  # a pattern no owner should have to read
        return f"{subject}: {wrote}This is not in the form expected here."
    return _bound_message(text, subject, wrote) or f"{subject}: {text}"


def _bound_message(text: str, subject: str, wrote: str) -> str | None:
    """The sentence for a length, range or type msgspec states; None for a rule of our own
    (a __post_init__ check), whose message is already in plain words."""
    if m := _LENGTH.match(text):
        what, op, n = m.groups()
        unit = "characters" if what == "str" else "entries"
        if op == ">=" and n == "1" and what == "str":
            return f"{subject} is empty. Write at least one character."
        if op == ">=" and n == "1":
            return f"{subject}: none given. Add at least one."
        bound = "at least" if op == ">=" else "at most"
        return f"{subject}: {wrote}Write {bound} {n} {unit}."
    if m := _RANGE.match(text):
        _, op, n = m.groups()
        bound = {">=": "at least", ">": "more than", "<=": "at most", "<": "less than"}[op]
        return f"{subject}: {wrote}Write a number {bound} {n}."
    if m := _EXPECTED_TYPE.match(text):
        kinds = [k.strip() for k in m.group(1).split("|")]
        words = " or ".join(_TYPE_WORDS.get(k, k) for k in kinds if k != "null") or _TYPE_WORDS["null"]
        return f"{subject}: {wrote}Write {words} here."
    return None
