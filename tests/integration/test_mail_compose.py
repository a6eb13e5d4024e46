"""Composing the completion and failure mails from their templates (supervisor/delivery/templates/mail_*)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from supervisor.delivery.mail import (
    compose_completed,
    compose_failed,
    document_name,
    explain_failure,
    human_expiry,
)

pytestmark = pytest.mark.timeout(300)

JOB = "9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
LINK = "https://exports.example/files/u/j.pdf?expires=1796646900&sig=ab12"
MENU_PAYLOAD = {
    "source": {"kind": "menu", "template": "classic",
               "menu": {"restaurant": {"name": "Bistro Lumière"}, "name": "Menu du soir", "sections": []}},
}


def test_completed_mail_names_the_menu_and_reads_well() -> None:
    mail = compose_completed(JOB, "pdf", LINK, datetime(2026, 12, 7, 12, 35, tzinfo=UTC),
                             recipient="ada@example.com", document=document_name(MENU_PAYLOAD))
    assert mail.subject == "Bistro Lumière \u2014 Menu du soir: your PDF is ready"
    assert mail.text.startswith("Hello,\n\nYour PDF of Bistro Lumière \u2014 Menu du soir is ready.")
    assert "The link works until 7 December 2026, 12:35 UTC." in mail.text
    assert f"\n{LINK}\n" in mail.text
    # a real button: a link styled as one, with the link itself again for clients without styles
    html = mail.html
    assert html.count('href="https://exports.example/files/u/j.pdf?expires=1796646900&amp;sig=ab12"') == 2
    assert ">Download the PDF</a>" in html and "display:inline-block" in html and "background:#1f5f8b" in html
    assert "<strong>Bistro Lumière \u2014 Menu du soir</strong>" in html
    assert "7 December 2026, 12:35 UTC" in html
    assert "T12:35" not in mail.text + html  # no ISO timestamps for people
    assert mail.template_data["expires"] == "7 December 2026, 12:35 UTC"
    assert mail.template_data["document"] == "Bistro Lumière \u2014 Menu du soir"


def test_completed_mail_without_a_name() -> None:
    mail = compose_completed(JOB, "image", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com")
    assert mail.subject == "Your image export is ready"
    assert "Your image export is ready." in mail.text and ">Download the image</a>" in mail.html
    assert "1 January 2030, 00:00 UTC" in mail.text


@pytest.mark.parametrize(
    ("when", "words"),
    [
        (datetime(2026, 12, 7, 12, 35, tzinfo=UTC), "7 December 2026, 12:35 UTC"),
        (datetime(2026, 12, 7, 13, 35, tzinfo=timezone(timedelta(hours=1))), "7 December 2026, 12:35 UTC"),
        ("2026-03-01T09:05:00+00:00", "1 March 2026, 09:05 UTC"),
        ("2026-03-01T00:30:00-02:00", "1 March 2026, 02:30 UTC"),
    ],
)
def test_human_expiry(when: datetime | str, words: str) -> None:
    assert human_expiry(when) == words


def test_failed_mail_says_what_to_do_next() -> None:
    words, step = explain_failure("validation", "render", "PDF has more than 100 pages (MAX_PAGES)", "page_limit")
    mail = compose_failed(JOB, "pdf", words, recipient="ada@example.com",
                          document=document_name(MENU_PAYLOAD), next_step=step)
    assert mail.subject == "Bistro Lumière \u2014 Menu du soir: your PDF could not be completed"
    assert "could not be completed: the document has more pages than allowed." in mail.text
    assert "What to do next: Split the menu into smaller parts" in mail.text
    assert "What to do next</p>" in mail.html and "Split the menu into smaller parts" in mail.html
    assert "MAX_PAGES" not in mail.text + mail.html  # internals stay out


@pytest.mark.parametrize(
    ("category", "reason", "render_failure", "step"),
    [
        ("transient", "storage", None, "problem on our side"),
        ("resource", "timeout", None, "Export again"),
        ("resource", "memory", None, "shrink large images"),
        ("validation", "render", "pixel_limit", "smaller width"),
        ("permanent", "render", "url_not_allowed", "address your administrator allows"),
        ("validation", "render", "internal", "Correct the menu"),
        ("transient", "render", "browser", "in a few minutes"),
        ("permanent", "render", None, "reply to this mail"),
    ],
)
def test_next_step(category: str, reason: str, render_failure: str | None, step: str) -> None:
    assert step in explain_failure(category, reason, "", render_failure)[1]


def test_document_name() -> None:
    assert document_name(MENU_PAYLOAD) == "Bistro Lumière \u2014 Menu du soir"
    unnamed = {"source": {"kind": "menu", "menu": {"restaurant": {"name": "Noodle\nBar"}}}}
    assert document_name(unnamed) == "Noodle Bar"  # one line: it goes into a header
    assert document_name({"source": {"kind": "html", "html": "<p>x</p>"}, "filename": "spring"}) == "spring"
    assert document_name({"source": {"kind": "url", "url": "https://x.example/?t=1"}}) == ""
    assert document_name(None) == ""
    assert document_name({"source": {"kind": "nonsense"}}) == ""


def test_subject_and_body_escape_the_restaurant_name() -> None:
    payload = {"source": {"kind": "menu", "menu": {"restaurant": {"name": "<b>Tom & Jerry's</b>"}}}}
    mail = compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", document=document_name(payload))
    assert mail.subject == "<b>Tom & Jerry's</b>: your PDF is ready"  # a header is plain text
    assert "&lt;b&gt;Tom &amp; Jerry&#39;s&lt;/b&gt;" in mail.html and "<b>Tom" not in mail.html
    assert "of <b>Tom & Jerry's</b> is ready" in mail.text


@pytest.mark.parametrize(
    ("reason", "message", "words"),
    [
        # The reason code decides, whatever the message says (no prose is parsed back).
        ("timeout", "render child died (crashed, exit code -9)", "the page took too long to render"),
        ("memory", "anything at all", "the page needed more memory than an export may use"),
        ("storage", "HTTP 503 from the bucket", "the file could not be stored"),
        ("stale", "worker w1 stopped heartbeating", "the export service handling it stopped, even after several tries"),
        # A render's own failure has a code of its own (below); its words are never matched.
        ("render", "PDF has 120 pages, more than the limit of 100 (MAX_PAGES)", "the export could not be completed"),
        (None, "job timed out after 60s", "the export could not be completed"),
        ("no-such-code", "bad input", "the export could not be completed"),
    ],
)
def test_failure_reason_codes_map_to_plain_words(reason: str | None, message: str, words: str) -> None:
    got_words, step = explain_failure("permanent", reason, message)
    assert got_words == words
    assert step and "Traceback" not in step
