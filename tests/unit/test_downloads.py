"""Download names and Content-Disposition (RFC 6266), without a server; curl -OJ is in test_http_api."""

from __future__ import annotations

import pytest

from supervisor.delivery.downloads import ascii_fallback, content_disposition, download_filename, with_download_name

JOB = "0b8f5c1e-5a7e-4a47-9d7e-3f3a1f0c2d11"


def menu(restaurant: str, name: str = "", **payload: str) -> dict[str, object]:
    return {"source": {"kind": "menu", "menu": {"restaurant": {"name": restaurant}, "name": name}}, **payload}


@pytest.mark.parametrize(
    ("payload", "content_type", "name"),
    [
        (menu("Chez Bars", "Dinner"), "application/pdf", "chez-bars-dinner.pdf"),
        (menu("Bistro Lumière", "Menu du soir"), "image/png", "bistro-lumière-menu-du-soir.png"),
        (menu("مطعم الياسمين", "قائمة العشاء"), "application/pdf", "مطعم-الياسمين-قائمة-العشاء.pdf"),
        (menu("Chez Bars", "Dinner", filename="Spring card"), "application/pdf", "Spring card.pdf"),
        ({"source": {"kind": "html", "html": "x"}, "filename": "report.pdf"}, "application/pdf", "report.pdf"),
        ({"source": {"kind": "html", "html": "x"}}, "image/jpeg", f"export-{JOB}.jpg"),
        (None, None, f"export-{JOB}.pdf"),
        (menu("   "), "application/pdf", f"export-{JOB}.pdf"),
    ],
)
def test_the_name_comes_from_filename_else_the_menu_else_the_job(
    payload: object, content_type: str | None, name: str
) -> None:
    assert download_filename(payload, content_type, JOB) == name


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("chez-bars-dinner.pdf",
         "attachment; filename=\"chez-bars-dinner.pdf\"; filename*=UTF-8''chez-bars-dinner.pdf"),
        ("chez-bars-dîner.pdf",
         "attachment; filename=\"chez-bars-diner.pdf\"; filename*=UTF-8''chez-bars-d%C3%AEner.pdf"),
        ("Carte été.pdf",
         "attachment; filename=\"Carte ete.pdf\"; filename*=UTF-8''Carte%20%C3%A9t%C3%A9.pdf"),
    ],
)
def test_content_disposition_has_an_ascii_fallback_and_the_utf8_name(name: str, header: str) -> None:
    assert content_disposition(name) == header


def test_a_name_without_latin_letters_falls_back_to_download() -> None:
    assert ascii_fallback("مطعم-الياسمين.pdf") == "download.pdf"
    assert ascii_fallback('a"b\\c.pdf') == "a_b_c.pdf"  # never a quote or backslash inside the quotes


def test_with_download_name() -> None:
    assert with_download_name("https://x/f.pdf?sig=1", "a b.pdf") == "https://x/f.pdf?sig=1&download=a+b.pdf"
    assert with_download_name("https://x/f.pdf", "a.pdf") == "https://x/f.pdf?download=a.pdf"
