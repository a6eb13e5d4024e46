"""Validation errors in the owner's words: the field as they wrote it, what is expected, an example;
never a regex, a type name or a JSON path. The HTTP 422 lists an enum's allowed values."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from shared.payload import PayloadError, parse_payload
from supervisor.delivery.mail import compose_failed, explain_failure
from supervisor.http.problems import ApiProblem
from supervisor.http.schemas import decode_create

pytestmark = [pytest.mark.timeout(30)]

# What an owner must never read.
INTERNALS = re.compile(r"regex|Expected|`|\$\.|\bstr\b|\bint\b|\bfloat\b|null|\[\d+\]|sections\.\d|\\d")


def menu_payload(item: dict[str, Any] | None = None, **menu: Any) -> dict[str, Any]:
    dish = {"name": "Soupe à l'oignon", "price": "9.50", "currency": "EUR", **(item or {})}
    document = {"restaurant": {"name": "Chez Bars"}, "name": "Dîner",
                "sections": [{"title": "Entrées", "items": [{"name": "Pain"}, dish]}], **menu}
    return {"source": {"kind": "menu", "menu": document}}


def refused(payload: dict[str, Any]) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        parse_payload(payload, "pdf")
    assert not INTERNALS.search(info.value.message), info.value.message
    return info.value


@pytest.mark.parametrize("price", ["9,50", 9.5, 9, "nine", "9.505"])
def test_a_price_names_the_dish_and_shows_an_example(price: Any) -> None:
    error = refused(menu_payload({"price": price}))
    assert error.field == "source.menu.sections.0.items.1.price"  # for programs
    assert error.message.startswith('Price of "Soupe à l\'oignon" (section "Entrées"): you wrote ')
    assert 'Write the price as text with a dot before the cents, like "9.50"' in error.message
    if not isinstance(price, str):
        assert "(a number, without quotes)" in error.message


@pytest.mark.parametrize("locale", ["xx_YY", "french", "fr-XX-latn"])
def test_an_unknown_locale_is_reported_against_the_locale_field(locale: str) -> None:
    error = refused(menu_payload(locale=locale))
    assert error.field == "source.menu.locale"
    assert error.message == (f'The menu\'s locale: you wrote "{locale}". Write a locale: a language and a '
                             'country, like "fr_FR", "en_US" or "ar_AE".')


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"item": {"dietary": ["spicyy"]}}, "source.menu.sections.0.items.1.dietary.0",
         'Dietary badge of "Soupe à l\'oignon" (section "Entrées"): you wrote "spicyy". Choose one of "vegetarian", '
         '"vegan", "gluten-free", "dairy-free", "nut-free", "spicy", "halal" or "kosher".'),
        ({"item": {"currency": "eur"}}, "source.menu.sections.0.items.1.currency",
         'Currency of "Soupe à l\'oignon" (section "Entrées"): you wrote "eur". Write a three-letter currency code '
         'in capitals, like "EUR" or "USD".'),
        ({"item": {"colour": "red"}}, "source.menu.sections.0.items.1.colour",
         'Colour of "Soupe à l\'oignon" (section "Entrées"): there is no field called "colour" here; remove it or '
         "correct its spelling. The fields here are: name, description, price, currency, dietary, image_url."),
        ({"item": {"name": ""}}, "source.menu.sections.0.items.1.name",
         'Name of dish 2 (section "Entrées") is empty. Write at least one character.'),
        ({"theme": {"accent_color": "gold"}}, "source.menu.theme.accent_color",
         'The menu\'s accent colour: you wrote "gold". Write a colour as # and six hexadecimal digits, '
         'like "#8a2be2".'),
    ],
)
def test_each_error_says_where_what_and_how(change: dict[str, Any], field: str, words: str) -> None:
    item = change.pop("item", None)
    error = refused(menu_payload(item, **change))
    assert (error.field, error.message) == (field, words)


def test_enums_list_their_values() -> None:
    payload = menu_payload()
    payload["source"]["template"] = "fancy"
    expected = 'The document\'s template: you wrote "fancy". Choose one of "classic" or "modern".'
    assert refused(payload).message == expected
    kind = refused({"source": {"kind": "pdf"}})
    assert kind.field == "source.kind"
    assert kind.message == 'The document\'s kind: you wrote "pdf". Choose one of "html", "menu" or "url".'
    size = refused({"source": {"kind": "html", "html": "x"}, "pdf": {"page_size": "A9"}})
    assert size.message.endswith('Choose one of "A3", "A4", "A5", "Letter", "Legal" or "Tabloid".')


def test_the_http_422_lists_allowed_values_and_names_the_field() -> None:
    body = {"user_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "export_type": "docx", "payload": menu_payload()}
    with pytest.raises(ApiProblem) as info:
        decode_create(json.dumps(body).encode(), 32)
    problem = info.value
    assert problem.status == 422 and problem.field == "export_type"
    assert '"pdf" or "image"' in problem.detail and "Invalid enum value" not in problem.detail
    body["export_type"] = "pdf"
    body["payload"]["source"]["menu"]["sections"][0]["items"][1]["price"] = "9,50"
    with pytest.raises(ApiProblem) as info:
        decode_create(json.dumps(body).encode(), 32)
    assert info.value.field == "payload.source.menu.sections.0.items.1.price"
    assert info.value.detail.startswith('Price of "Soupe à l\'oignon" (section "Entrées"): you wrote "9,50".')


def test_the_failure_mail_says_what_to_fix_without_internals() -> None:
    error = refused(menu_payload({"price": "9,50"}))
    stored = f"invalid payload: {error}"  # what settle writes to error_message
    assert "source.menu.sections.0.items.1.price" in stored
    words, step = explain_failure("validation", "invalid_payload", stored)
    mail = compose_failed("job-1", "pdf", words, recipient="chef@example.com", document="Chez Bars \u2014 Dîner",
                          next_step=step)
    text = " ".join(mail.text.split())
    assert "could not be completed: something in the document needs correcting." in text
    assert 'What to do next: Price of "Soupe à l\'oignon" (section "Entrées"): you wrote "9,50".' in text
    assert 'like "9.50"' in text and "Then export again." in text
    for part in (mail.text, mail.html):
        assert "source.menu" not in part and "regex" not in part and "Expected" not in part


def test_a_limit_in_the_mail_names_no_setting() -> None:
    with pytest.raises(PayloadError) as info:
        parse_payload({"source": {"kind": "html", "html": "x" * 5000}}, "pdf", max_input_bytes=1024)
    assert "MAX_INPUT_BYTES" in str(info.value)  # the operator's and developer's view
    words, step = explain_failure("validation", "invalid_payload", f"invalid payload: {info.value}")
    assert "MAX_INPUT_BYTES" not in words + step
    assert step.startswith("The document is 5,") and "Shorten it or remove large images." in step
